"""One cell: dataset -> attack -> defense -> metrics -> one result record.

Data flows one way: the defense gets the poisoned images and labels only; the ground truth
(poison and cover masks) is used by the metrics step alone.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import devrun
from benchmark.cache import ArtifactCache, atomic_write, canonical_json, config_hash
from benchmark.data import (
    DATASETS,
    DataNotFoundError,
    Dataset,
    ImageSet,
    default_cache_dir,
    default_data_root,
    load_dataset,
    unpack_splits,
)
from benchmark.facts import record_facts
from benchmark.metrics import accuracy, attack_success_rate, auroc, best_threshold, isolation_rates
from benchmark.models import build_model
from benchmark.sources import current_sources
from benchmark.spec import CellSpec
from benchmark.train import LambdaCallback, Trainer, cpu_native_bf16


@dataclass
class Runtime:
    """Where things lie and how to run: never part of a cell's identity."""

    results: Path = Path("results")
    data_root: Path = field(default_factory=default_data_root)
    imagenet_root: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    device: str | None = None
    threads: int | None = None
    download: bool = True
    save_models: bool = False  # the final model of every cell under <results>/models/<id>.pt
    plugins: list[str] = field(default_factory=list)
    # Ray: ship the driver's decoded data to the trials ("auto": on multi-node clusters, used
    # where a node lacks the data; "always": every trial uses it; "never")
    ship_data: str = "auto"

    def __post_init__(self) -> None:
        self.results = Path(self.results).expanduser().resolve()
        self.data_root = Path(self.data_root).expanduser().resolve()
        self.cache_dir = Path(self.cache_dir).expanduser().resolve()
        if self.imagenet_root is not None:
            self.imagenet_root = Path(self.imagenet_root).expanduser().resolve()

    def artifacts(self, spec: CellSpec, ledger: list[dict[str, Any]] | None = None) -> ArtifactCache:
        """The cell's artifact cache: a development run tags what it makes with its preset;
        ``ledger`` is the cell's work (``Trainer.work``), which the cache tags by artifact."""
        return ArtifactCache(self.results / "cache", owner=spec.preset if spec.fast_dev_run else "",
                             ledger=ledger)


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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def hardware(trainer: Trainer) -> dict[str, Any]:
    hw = {"device": str(trainer.device), "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
          # what this cell's own training steps ran in ("" when every model came from the cache)
          "precision": "+".join(sorted(trainer.precisions_used)),
          "channels_last": trainer.channels_last}
    if not trainer.cuda:
        # the same fp32 cell can differ across CPU kinds: the model name and bf16 support say which
        hw["cpu_native_bf16"] = cpu_native_bf16()
        hw["cpu_model"] = cpu_model()
    if trainer.cuda:
        hw["gpu"] = torch.cuda.get_device_name(trainer.device)
    return hw


SUBSET_KEYS = ("train_size", "test_size", "subset_seed")
# decoded splits a Ray driver shipped to this process (``offer_shipped``), by ``data_key``
SHIPPED: dict[str, dict] = {}


def data_source_args(spec: CellSpec, rt: Runtime) -> tuple[Path, dict[str, Any]]:
    """The root and loader options of a cell's data, subset options left out."""
    root = rt.imagenet_root if spec.dataset == "imagefolder" and rt.imagenet_root else rt.data_root
    opts = {k: v for k, v in spec.data.items() if k not in SUBSET_KEYS}
    if DATASETS.get(spec.dataset).downloads:
        opts["download"] = rt.download
    return root, opts


def data_key(spec: CellSpec, rt: Runtime) -> str:
    """Which decoded splits a cell reads: cells with the same key share one shipped copy."""
    root, opts = data_source_args(spec, rt)
    return config_hash({"dataset": spec.dataset, "root": str(root),
                        **{k: v for k, v in opts.items() if k != "download"}})


def offer_shipped(shipped: dict[str, dict]) -> None:
    SHIPPED.update(shipped)


def load_cell_dataset(spec: CellSpec, rt: Runtime) -> Dataset:
    """The cell's data. With a shipped copy: ``rt.ship_data == "always"`` uses it; otherwise the
    node's own copy when it has one, the shipped copy when it has not."""
    root, opts = data_source_args(spec, rt)
    subset = {k: v for k, v in spec.data.items() if k in SUBSET_KEYS}
    packed = SHIPPED.get(data_key(spec, rt))
    if packed is None or rt.ship_data != "always":
        try:
            return load_dataset(spec.dataset, root, rt.cache_dir, **subset, **opts)
        except DataNotFoundError:
            if packed is None:
                raise
    return load_dataset(spec.dataset, root, rt.cache_dir, splits=unpack_splits(packed), **subset)


def make_monitor(trainer: Trainer, test: ImageSet, triggered: ImageSet, targets: torch.Tensor,
                 size: int, every: int, split: dict[str, float] | None = None):
    """Per-epoch CA/ASR on fixed test subsets (cheap enough to run every epoch), plus the
    TPR/FPR of the split a defense last showed the harness (``split``, see ``split_prober``);
    ``targets``: the class each triggered image should be taken for."""
    gen = torch.Generator().manual_seed(1234)
    clean = test.subset(torch.randperm(len(test), generator=gen)[:size])
    rows = torch.randperm(len(triggered), generator=gen)[:size]
    trig, target = triggered.subset(rows), targets[rows]

    def monitor(epoch: int, model: torch.nn.Module) -> dict[str, float]:
        out = dict(split or {})
        if every <= 0 or epoch % every:
            return out
        return {**out, "ca": accuracy(trainer.predict(model, clean.images), clean.labels),
                "asr": attack_success_rate(trainer.predict(model, trig.images), target)}
    return LambdaCallback(on_epoch_end=monitor)


def split_prober(truth: torch.Tensor, into: dict[str, float]
                 ) -> Callable[[torch.Tensor, torch.Tensor | None], None]:
    """A ``DefenseContext.split_probe``: the left-out rows' TPR/FPR against the poison mask,
    and with the split's scores their AUROC and mean over the poisoned and the benign rows
    (what separates the two groups, epoch by epoch), kept in ``into`` for the next curve point."""
    def probe(left_out: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        rates = isolation_rates(left_out, truth)
        into.update(split_tpr=rates["tpr"], split_fpr=rates["fpr"])
        if scores is not None and truth.any() and (~truth).any():
            s = scores.double()
            into.update(split_auroc=auroc(s, truth), split_score_poisoned=float(s[truth].mean()),
                        split_score_benign=float(s[~truth].mean()))
    return probe


def split_validation(test: ImageSet, triggered: ImageSet, rows: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    """(clean test set, triggered test set, validation set): with ``fraction`` > 0 a seeded
    share of the clean test images becomes the defense's benign validation set and leaves both
    test sets (``triggered`` holds the test ``rows`` in order: ``Attack.test_rows``)."""
    if fraction <= 0:
        return test, triggered, None
    n = len(test)
    val = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:round(fraction * n)]
    rest = torch.ones(n, dtype=torch.bool)
    rest[val] = False
    return (test.subset(rest.nonzero().flatten()), triggered.subset(rest[rows].nonzero().flatten()),
            test.subset(val.sort().values))


def give_trusted(ctx, dataset: Dataset, poisoned, per_class: int, seed: int) -> None:  # noqa: ANN001
    """Trusted clean samples for the defense: held-out training images (outside the cell's
    subset) when there are enough, else ground-truth-clean training rows, which the metrics then
    leave out of TPR/FPR."""
    held = dataset.held_out_per_class(per_class, seed)
    if held is not None:
        ctx.trusted = held
        ctx.trusted_source = f"{len(held)} held-out training images (outside the cell's subset)"
        return
    clean = ~poisoned.poison_mask & ~poisoned.cover_mask
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(dataset.num_classes):
        cand = (clean & (poisoned.labels == c)).nonzero().flatten()
        rows.append(cand[torch.randperm(len(cand), generator=g)[:per_class]])
    ctx.trusted_rows = torch.cat(rows)
    ctx.trusted = ctx.train.subset(ctx.trusted_rows)
    ctx.trusted_source = (f"{len(ctx.trusted_rows)} ground-truth-clean training samples (rows of the "
                          f"training set; left out of TPR/FPR)")


def save_model(model: torch.nn.Module, spec: CellSpec, num_classes: int, path: Path) -> Path:
    """A state dict plus the model config, loadable with ``torch.load(weights_only=True)`` and
    ``benchmark.models.load_saved`` (no suite class is pickled)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "model": spec.model, "model_params": dict(spec.model_params),
               "num_classes": num_classes, "cell": spec.id}
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def make_attack(spec: CellSpec, dataset: Dataset, rt: Runtime,
                trainer: Trainer | None = None, make_model=None):  # noqa: ANN001
    """The cell's attack object, its artifacts keyed by what they depend on."""
    from attacks import AttackContext

    # reference models and generators: the architecture is part of the artifact's identity
    uses_model = spec.attack_cls.uses_model(spec.attack_params)
    device = trainer.device if trainer is not None else torch.device("cpu")
    ctx = AttackContext(cache=rt.artifacts(spec, trainer.work if trainer is not None else None),
                        cache_key=spec.artifact_key("attack_model" if uses_model else "attack"),
                        keys=spec.artifact_keys(("clean_reference",)), seed=spec.seed,
                        num_classes=dataset.num_classes, device=device, trainer=trainer,
                        make_model=make_model, held_out=dataset.held_out,
                        precision=spec.train.precision)
    return spec.attack_cls(copy.deepcopy(spec.attack_params), ctx)


def refusal(spec: CellSpec) -> str | None:
    """Why the cell's defense cannot run on its model (one line naming what it needs), or None.
    Only the architecture is inspected, so the probe's head has CIFAR-10's ten classes whatever
    the dataset; the grid drops refused cells before any data is read (``cli.without_refused``)."""
    model = _probe_model(spec.model, canonical_json(dict(spec.model_params)), 10)
    try:
        spec.defense_cls.check_model(spec.defense_params, model)
    except ValueError as exc:
        return f"{spec.defense} cannot run on {spec.model}: {exc}"
    return None


def check_cell(spec: CellSpec, dataset: Dataset, rt: Runtime) -> None:
    """The checks that need the cell's data (target class in range, enough images to poison):
    ``UsageError`` before any cell trains."""
    make_attack(spec, dataset, rt).check(dataset.train)


@functools.lru_cache(maxsize=4)
def _probe_model(name: str, params: str, num_classes: int) -> torch.nn.Module:
    """An untrained model that ``Defense.check_model`` inspects (never trains): built once per
    architecture while a grid checks its cells, not once per cell."""
    kwargs = json.loads(params)
    if "pretrained" in kwargs:  # its structure is what is checked: no weights to download
        kwargs["pretrained"] = False
    return build_model(name, num_classes, **kwargs)


def poison(spec: CellSpec, dataset: Dataset, rt: Runtime, trainer: Trainer, make_model):
    """The poisoned training set and triggered test set, computed once per attack config."""
    attack = make_attack(spec, dataset, rt, trainer, make_model)

    def compute() -> dict:
        attack.prepare(dataset.train)
        return {"train": attack.poison_train(dataset.train), "test": attack.trigger_test(dataset.test)}

    reused = attack.ctx.cache.exists("poisoned", attack.ctx.cache_key)
    art = attack.ctx.cache.get_or_create("poisoned", attack.ctx.cache_key, compute)
    if attack.params.repoison_every_epoch and reused:
        # each epoch re-poisons with the attack's artifacts: load (or rebuild) them here, in the
        # attack's time and before training seeds anything, not inside the training loop
        attack.prepare(dataset.train)
    return art["train"], art["test"], attack


def repoisoning(attack, train: ImageSet, fixed) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    """Each epoch's training set for an attack that re-poisons every epoch (prepared by
    ``poison``): epoch 0 is the fixed poisoned set (the record's ground truth), later ones fresh
    draws of rows and noise."""
    def epoch_data(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (fixed.images, fixed.labels) if epoch == 0 else attack.repoisoned(train, epoch)

    return epoch_data


def repoison_info(attack) -> dict[str, str]:  # noqa: ANN001
    if not attack.params.repoison_every_epoch:
        return {}
    return {"threat_model": "training-time control: fresh poisoned and cover rows every epoch "
                            "(the poison mask here is epoch 1's)"}


def phase_seconds(curves: dict[str, list[dict]], defense_s: float) -> dict[str, float]:
    """Where a defense's time went, from its curves: each phase's training epochs, its per-epoch
    re-splits (``<phase>_split_s``) or re-poisoned sets (``<phase>_data_s``), its curve
    evaluations (``curves_s``); ``other_s`` is the rest (isolation statistics, loss rankings
    outside a training loop). A phase taken from the cache shows as ``<phase>_cached_s``, what
    it cost when it was computed, and the epochs an interrupted run made before this one resumed
    them as ``<phase>_resumed_s``, both outside the sum."""
    out: dict[str, float] = {}
    cached: dict[str, float] = {}
    for name, curve in curves.items():
        rows = [p for p in curve if isinstance(p, dict) and "seconds" in p]
        if not rows:
            continue
        if all(p.get("from_cache") for p in rows):
            cached[f"{name}_cached_s"] = sum(p["seconds"] for p in rows)
            continue
        if any(p.get("resumed") for p in rows):  # epochs an interrupted run of the cell made
            cached[f"{name}_resumed_s"] = sum(p["seconds"] for p in rows if p.get("resumed"))
            rows = [p for p in rows if not p.get("resumed")]
        out[f"{name}_s"] = sum(p["seconds"] for p in rows)
        for part in ("split", "data"):  # per-epoch re-splits, re-poisoned data
            if any(f"{part}_s" in p for p in rows):
                out[f"{name}_{part}_s"] = sum(p.get(f"{part}_s", 0.0) for p in rows)
        out["curves_s"] = out.get("curves_s", 0.0) + sum(p.get("callback_s", 0.0) for p in rows)
    out["other_s"] = max(0.0, defense_s - sum(out.values()))
    return {**out, **cached}


def run_cell(spec: CellSpec, rt: Runtime) -> dict[str, Any]:
    """Run one cell and return its record (raises on failure; see ``run_cell_safe``); a spec
    with ``fast_dev_run`` runs as a development run (``benchmark.devrun``)."""
    from defenses import DefenseContext

    times: dict[str, Any] = {}  # seconds; defense_phases a dict of them
    t0 = time.perf_counter()
    seed = spec.seed
    seed_everything(seed)
    dataset = load_cell_dataset(spec, rt)
    times["data_s"] = time.perf_counter() - t0

    trainer = Trainer(dataset.mean, dataset.std, device=rt.device, threads=rt.threads,
                      loops=devrun.Loops(spec.fast_dev_run))

    def make_model() -> torch.nn.Module:
        return build_model(spec.model, dataset.num_classes, **spec.model_params)

    t = time.perf_counter()
    poisoned, triggered, attack = poison(spec, dataset, rt, trainer, make_model)
    times["attack_s"] = time.perf_counter() - t
    attack_work = len(trainer.work)  # the work entries of the attack's phases come first

    t = time.perf_counter()
    ev = spec.eval
    defense_cls = spec.defense_cls
    params = copy.deepcopy(spec.defense_params)
    test, trig, validation = split_validation(dataset.test, triggered, attack.test_rows(dataset.test),
                                              defense_cls.validation_fraction(params), seed)
    split: dict[str, float] = {}
    targets = attack.targets_of(trig.labels, dataset.num_classes)  # what a triggered image should become
    ctx = DefenseContext(
        train=poisoned.as_imageset(), make_model=make_model, trainer=trainer,
        train_cfg=copy.deepcopy(spec.train), seed=seed, cache=rt.artifacts(spec, trainer.work),
        cache_key=spec.artifact_key("defense"),
        keys=spec.artifact_keys(("shared", "images")), trusted=validation,
        monitor=make_monitor(trainer, test, trig, targets, ev.curve_size, ev.curve_every, split),
        split_probe=split_prober(poisoned.poison_mask.cpu(), split))
    if attack.params.repoison_every_epoch:  # resolve_cell admits only defenses that accept it
        ctx.epoch_data = repoisoning(attack, dataset.train, poisoned)
    if defense_cls.needs_ground_truth(params):
        ctx.ground_truth = poisoned.poison_mask.clone()
    if defense_cls.trusted_per_class(params) > 0:
        give_trusted(ctx, dataset, poisoned, defense_cls.trusted_per_class(params), seed)
    seed_everything(seed)
    ctx.checkpoint_scope = {"cell": spec.id, "code": current_sources(spec.to_config())}
    result = defense_cls(params).run(ctx)
    ctx.clear_checkpoints()  # the defense's own fits are done: nothing to resume
    times["defense_s"] = time.perf_counter() - t
    times["defense_phases"] = phase_seconds(result.curves, times["defense_s"])

    t = time.perf_counter()
    pred_clean = trainer.predict(result.model, test.images)
    pred_trig = trainer.predict(result.model, trig.images)
    metrics: dict[str, Any] = {
        "ca": accuracy(pred_clean, test.labels),
        "asr": attack_success_rate(pred_trig, targets),
        "r_acc": accuracy(pred_trig, trig.labels),
    }
    isolation: dict[str, Any] = {}
    judged = torch.ones(len(poisoned), dtype=torch.bool) if result.excluded is None else ~result.excluded
    if result.isolated is not None:
        rates = isolation_rates(result.isolated[judged], poisoned.poison_mask[judged])
        metrics.update(tpr=rates["tpr"], fpr=rates["fpr"])
        isolation["isolated"] = rates
        if poisoned.cover_mask.any():
            isolation["cover_isolated_rate"] = float(
                result.isolated[poisoned.cover_mask].float().mean())
    if result.scores is not None:
        metrics["auroc"] = auroc(result.scores[judged], poisoned.poison_mask[judged])
        # the threshold an oracle would pick (max TPR - FPR): what SCALE-UP's paper reports
        isolation["best_threshold"] = best_threshold(result.scores[judged], poisoned.poison_mask[judged])
    isolation["masks"] = {name: isolation_rates(m[judged], poisoned.poison_mask[judged])
                          for name, m in result.masks.items()}
    if result.excluded is not None:
        isolation["excluded_rows"] = int(result.excluded.sum())
    times["eval_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0
    record: dict[str, Any] = {}
    if defense_cls.is_detector:
        record["metrics_of"] = "the backdoored model the detector inspected (it trains none)"
    if validation is not None:
        record["eval_note"] = (f"CA/ASR on the test set minus the defense's validation split "
                               f"({len(validation)} clean test images, seeded)")
    if spec.fast_dev_run is not None:
        record["fast_dev_run"] = {**spec.fast_dev_run.as_dict(), "work": trainer.work,
                                  "attack_entries": attack_work}
    if rt.save_models:
        record["model_path"] = str(save_model(result.model, spec, dataset.num_classes,
                                              rt.results / "models" / f"{spec.id}.pt"))
    config = spec.to_config()

    return {
        "id": spec.id, "status": "ok", "config": config, "metrics": metrics, **record,
        "isolation": isolation, "curves": result.curves,
        "defense_info": {"title": defense_cls.title or defense_cls.name, **result.info},
        "attack_info": {**poisoned.info, **repoison_info(attack), "n_train": len(poisoned),
                        "n_poisoned": int(poisoned.poison_mask.sum()),
                        "n_cover": int(poisoned.cover_mask.sum()), "n_triggered_test": len(triggered)},
        "data_source": dataset.source, "timings": times, "versions": versions(),
        "sources": current_sources(config), "facts": record_facts(config, spec.id),
        "hardware": hardware(trainer),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_cell_safe(spec: CellSpec, rt: Runtime) -> dict[str, Any]:
    """``run_cell``, with any exception turned into a failed record (the grid goes on)."""
    try:
        return run_cell(spec, rt)
    except Exception as exc:  # noqa: BLE001 - recorded, not swallowed
        return failed_record(spec, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def failed_record(spec: CellSpec, error: str, tb: str = "") -> dict[str, Any]:
    config = spec.to_config()
    return {"id": spec.id, "status": "failed", "config": config, "error": error,
            "traceback": tb, "versions": versions(), "facts": record_facts(config, spec.id),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
