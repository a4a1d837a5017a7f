"""One cell: dataset -> attack -> defense -> metrics -> one result record.

Data flows one way: the defense gets the poisoned images and labels only; the ground truth
(poison and cover masks) is used by the metrics step alone.
"""

from __future__ import annotations

import os
import platform
import random
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.cache import ArtifactCache
from benchmark.config import cell_id, identity
from benchmark.data import Dataset, ImageSet, default_cache_dir, default_data_root, load_dataset
from benchmark.metrics import accuracy, attack_success_rate, auroc, isolation_rates
from benchmark.models import build_model
from benchmark.train import TrainConfig, Trainer, cpu_native_bf16


@dataclass
class Runtime:
    """Where things lie and how to run: never part of a cell's identity."""

    results: Path = Path("results")
    data_root: Path = field(default_factory=default_data_root)
    imagenet_root: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    device: str | None = None
    threads: int | None = None
    progress: bool = False
    download: bool = True
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.results = Path(self.results).expanduser().resolve()
        self.data_root = Path(self.data_root).expanduser().resolve()
        self.cache_dir = Path(self.cache_dir).expanduser().resolve()
        if self.imagenet_root is not None:
            self.imagenet_root = Path(self.imagenet_root).expanduser().resolve()

    @property
    def artifacts(self) -> ArtifactCache:
        return ArtifactCache(self.results / "cache")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "pandas", "jenkspy", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def hardware(trainer: Trainer) -> dict[str, Any]:
    hw = {"device": str(trainer.device), "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
          # what this cell's own training steps ran in ("" when every model came from the cache)
          "precision": "+".join(sorted(trainer.precisions_used)),
          "channels_last": trainer.channels_last}
    if not trainer.cuda:
        hw["cpu_native_bf16"] = cpu_native_bf16()
    if trainer.cuda:
        hw["gpu"] = torch.cuda.get_device_name(trainer.device)
    return hw


def load_cell_dataset(config: dict[str, Any], rt: Runtime) -> Dataset:
    root = rt.imagenet_root if config["dataset"] == "imagefolder" and rt.imagenet_root else rt.data_root
    opts = dict(config["data"])
    if config["dataset"] == "cifar10":
        opts["download"] = rt.download
    return load_dataset(config["dataset"], root, rt.cache_dir, **opts)


def make_monitor(trainer: Trainer, test: ImageSet, triggered: ImageSet, target: int,
                 size: int, every: int):
    """Per-epoch CA/ASR on fixed test subsets (cheap enough to run every epoch)."""
    gen = torch.Generator().manual_seed(1234)
    clean = test.subset(torch.randperm(len(test), generator=gen)[:size])
    trig = triggered.subset(torch.randperm(len(triggered), generator=gen)[:size])

    def monitor(epoch: int, model: torch.nn.Module) -> dict[str, float]:
        if every <= 0 or epoch % every:
            return {}
        return {"ca": accuracy(trainer.predict(model, clean.images), clean.labels),
                "asr": attack_success_rate(trainer.predict(model, trig.images), target)}
    return monitor


def poison(config: dict[str, Any], dataset: Dataset, rt: Runtime, trainer: Trainer, make_model):
    """The poisoned training set and triggered test set, computed once per attack config."""
    from attacks import ATTACKS, AttackContext

    attack_cls = ATTACKS.get(config["attack"])
    fields = ["dataset", "data", "attack", "attack_params", "attack_version", "seed"]
    # reference models and generators: the architecture is part of the artifact's identity
    if attack_cls.uses_model(attack_cls.Params(**config["attack_params"])):
        fields += ["model", "model_params"]
    ident = identity(config)
    key = {k: ident[k] for k in fields if k in ident}  # a version is absent while it is 1
    ctx = AttackContext(cache=rt.artifacts, cache_key=key, seed=config["seed"],
                        num_classes=dataset.num_classes, device=trainer.device, trainer=trainer,
                        make_model=make_model)
    attack = attack_cls(attack_cls.Params(**config["attack_params"]), ctx)

    def compute() -> dict:
        attack.prepare(dataset.train)
        return {"train": attack.poison_train(dataset.train), "test": attack.trigger_test(dataset.test)}

    art = rt.artifacts.get_or_create("poisoned", key, compute)
    return art["train"], art["test"], attack


def run_cell(config: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    """Run one cell and return its record (raises on failure; see ``run_cell_safe``)."""
    from defenses import DEFENSES, DefenseContext

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    seed = config["seed"]
    seed_everything(seed)
    dataset = load_cell_dataset(config, rt)
    times["data_s"] = time.perf_counter() - t0

    trainer = Trainer(dataset.mean, dataset.std, device=rt.device, threads=rt.threads,
                      progress=rt.progress)

    def make_model() -> torch.nn.Module:
        return build_model(config["model"], dataset.num_classes, **config["model_params"])

    t = time.perf_counter()
    poisoned, triggered, attack = poison(config, dataset, rt, trainer, make_model)
    times["attack_s"] = time.perf_counter() - t
    target = attack.params.target

    t = time.perf_counter()
    ev = config["eval"]
    defense_cls = DEFENSES.get(config["defense"])
    # everything the defense's artifacts depend on, its own version included
    ident = identity(config)
    upstream = {k: ident[k] for k in ("dataset", "data", "attack", "attack_params", "attack_version",
                                      "model", "model_params", "train", "seed", "defense_version")
                if k in ident}
    ctx = DefenseContext(
        train=poisoned.as_imageset(), make_model=make_model, trainer=trainer,
        train_cfg=TrainConfig.from_dict(config["train"]), seed=seed, cache=rt.artifacts,
        cache_key=upstream,
        monitor=make_monitor(trainer, dataset.test, triggered, target, ev["curve_size"],
                             ev["curve_every"]))
    params = defense_cls.Params(**config["defense_params"])
    if defense_cls.needs_ground_truth(params):
        ctx.ground_truth = poisoned.poison_mask.clone()
    seed_everything(seed)
    result = defense_cls(params).run(ctx)
    times["defense_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pred_clean = trainer.predict(result.model, dataset.test.images)
    pred_trig = trainer.predict(result.model, triggered.images)
    metrics: dict[str, Any] = {
        "ca": accuracy(pred_clean, dataset.test.labels),
        "asr": attack_success_rate(pred_trig, target),
        "r_acc": accuracy(pred_trig, triggered.labels),
    }
    isolation: dict[str, Any] = {}
    if result.isolated is not None:
        rates = isolation_rates(result.isolated, poisoned.poison_mask)
        metrics.update(tpr=rates["tpr"], fpr=rates["fpr"])
        isolation["isolated"] = rates
        if poisoned.cover_mask.any():
            isolation["cover_isolated_rate"] = float(
                result.isolated[poisoned.cover_mask].float().mean())
    if result.scores is not None:
        metrics["auroc"] = auroc(result.scores, poisoned.poison_mask)
    isolation["masks"] = {name: isolation_rates(m, poisoned.poison_mask)
                          for name, m in result.masks.items()}
    times["eval_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    return {
        "id": cell_id(config), "status": "ok", "config": config, "metrics": metrics,
        "isolation": isolation, "curves": result.curves, "defense_info": result.info,
        "attack_info": {**poisoned.info, "n_train": len(poisoned),
                        "n_poisoned": int(poisoned.poison_mask.sum()),
                        "n_cover": int(poisoned.cover_mask.sum()), "n_triggered_test": len(triggered)},
        "data_source": dataset.source, "timings": times, "versions": versions(),
        "hardware": hardware(trainer),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_cell_safe(config: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    """``run_cell``, with any exception turned into a failed record (the grid goes on)."""
    try:
        return run_cell(config, rt)
    except Exception as exc:  # noqa: BLE001 - recorded, not swallowed
        return failed_record(config, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def failed_record(config: dict[str, Any], error: str, tb: str = "") -> dict[str, Any]:
    return {"id": cell_id(config), "status": "failed", "config": config, "error": error,
            "traceback": tb, "versions": versions(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
