"""The GPU check: ``python -m benchmark.gpucheck --data-root DIR`` on one GPU, one JSON out.

Measures what the full grid's cost follows from and runs what only the GPU path does, in under
8 minutes on one H100 (each part says how long it took):
1. ``throughput``: the trainer's img/s at the full width (64) in fp32, bf16 autocast, NCHW
   against channels_last, and ``torch.compile`` (with bf16), against the peers' DataLoader loop
   (``benchmark.perf``), at batch sizes 128 and 512;
2. ``cell``: one full-configuration No Defense BadNets cell with its epochs cut (``--epochs``),
   its CA/ASR per epoch and seconds per epoch;
3. ``phases``: seconds per epoch of each phase kind at the full configuration, timed over a few
   steps and scaled to an epoch: plain training, DBD's SimCLR (batch 512), MixMatch (1024
   iterations of 64), PIPD's feature extraction over the training set;
4. ``dev_run``: the development run's covering subset (every attack with No Defense, every
   defense on BadNets) on the device: autocast, device placement, data held on the GPU;
5. ``ray``: four smoke trials packed on the one GPU (``--gpus-per-trial 0.25``), where Ray is
   installed (skipped, and said so, where it is not).
``calibration`` holds the supervised img/s by speed key for ``run_benchmark.py --dry-run
--calibration FILE`` (the grid's device-hours from its development run's work). Without a GPU
it runs the same parts on the CPU at ``--scale tiny`` (the test of this command).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SCALES = {  # what each part processes: the real check, and the CPU fallback's seconds-long one
    "gpu": {"width": 64, "images": 10240, "batches": (128, 512), "epochs": 15, "steps": 20,
            "feature_images": 10000, "grid": "full", "sets": []},
    "tiny": {"width": 8, "images": 256, "batches": (32,), "epochs": 2, "steps": 2,
             "feature_images": 256, "grid": "smoke",
             "sets": ["--set", "data.train_size=200", "--set", "data.test_size=60",
                      "--set", "eval.curve_size=20"]},
}


def timed(part: str, report: dict[str, Any], fn, *args, **kwargs):  # noqa: ANN001, ANN201
    """Run one part, keep its result and seconds in ``report``; a part that fails is recorded
    with its error and the check goes on."""
    t0 = time.perf_counter()
    try:
        report[part] = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - recorded, the other parts still run
        report[part] = {"error": f"{type(exc).__name__}: {exc}"}
    report.setdefault("seconds", {})[part] = round(time.perf_counter() - t0, 1)
    print(f"[{part}] {time.perf_counter() - t0:.1f} s", flush=True)
    return report[part]


def throughput(scale: dict, data_root: str | None) -> dict[str, float]:
    from benchmark.data import CIFAR10_MEAN, CIFAR10_STD
    from benchmark.perf import bench_peer_loop, bench_trainer, load_images
    from benchmark.train import Trainer

    images, labels, _ = load_images(scale["images"], data_root)
    out: dict[str, float] = {}
    for batch in scale["batches"]:
        for name, cl, precision, comp in (("fp32", True, "fp32", False), ("fp32 NCHW", False, "fp32", False),
                                          ("bf16", True, "bf16", False),
                                          ("compile+bf16", True, "bf16", True)):
            trainer = Trainer(CIFAR10_MEAN, CIFAR10_STD, channels_last=cl)
            speed, warm = bench_trainer(trainer, scale["width"], images, labels, batch, precision, comp)
            out[f"trainer {name} b{batch}"] = round(speed, 1)
            out[f"warmup_s {name} b{batch}"] = round(warm, 1)
            print(f"  trainer {name:13s} batch {batch}: {speed:9.1f} img/s", flush=True)
        dev = Trainer(CIFAR10_MEAN, CIFAR10_STD).device
        workers = min(8, len(__import__("os").sched_getaffinity(0)))
        out[f"peer loop b{batch}"] = round(bench_peer_loop(dev, scale["width"], images, labels,
                                                           batch, workers), 1)
        print(f"  peer loop              batch {batch}: {out[f'peer loop b{batch}']:9.1f} img/s", flush=True)
    best = max((k for k in out if k.startswith("trainer ")), key=out.get)
    out["best"] = best
    out["best_vs_peer"] = round(out[best] / max(v for k, v in out.items() if k.startswith("peer")), 2)
    return out


def run_cells(args: list[str], results: Path) -> list[dict]:
    from benchmark.cli import main

    main(["--executor", "serial", "--results", str(results), *args])
    return [json.loads(p.read_text()) for p in sorted(results.rglob("records/*.json"))]


def cell(scale: dict, data_root: str | None, work: Path) -> dict[str, Any]:
    """The full configuration's No Defense BadNets cell, epochs cut."""
    extra = ["--data-root", data_root] if data_root else []
    recs = run_cells(["--grid", scale["grid"], "--attacks", "badnets", "--defenses", "no_defense",
                      "--set", f"train.epochs={scale['epochs']}", *scale["sets"], *extra], work / "cell")
    rec = recs[0]
    if rec["status"] != "ok":
        return {"error": rec.get("error")}
    curve = rec["curves"]["train"]
    return {"id": rec["id"], "ca": rec["metrics"]["ca"], "asr": rec["metrics"]["asr"],
            "epochs": [{k: p.get(k) for k in ("epoch", "ca", "asr", "train_loss", "seconds", "img_per_s")}
                       for p in curve],
            "seconds_per_epoch": sum(p["seconds"] for p in curve[1:]) / max(1, len(curve) - 1),
            "hardware": rec["hardware"], "total_s": rec["timings"]["total_s"]}


def phases(scale: dict, data_root: str | None) -> dict[str, float]:
    """Seconds per epoch of each phase kind at the full configuration, from a few timed steps."""
    from benchmark.augment import StrongAugment
    from benchmark.data import CIFAR10_MEAN, CIFAR10_STD
    from benchmark.isolation import layer_features
    from benchmark.models import Backbone, build_model, classifier_head
    from benchmark.perf import load_images, sync
    from benchmark.semisup import MixMatch, MixMatchParams
    from benchmark.train import TrainConfig, Trainer
    from defenses.dbd import projection_head, simclr_step

    n_train, steps = 50_000, scale["steps"]
    images, labels, _ = load_images(max(scale["images"], 1024), data_root)
    trainer = Trainer(CIFAR10_MEAN, CIFAR10_STD)

    def per_step(cfg: TrainConfig, model: torch.nn.Module, step=None) -> float:  # noqa: ANN001
        trainer.fit(model, images, labels, cfg.replace(steps_per_epoch=2), step=step)  # warm-up
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.fit(model, images, labels, cfg.replace(steps_per_epoch=steps), step=step)
        sync(trainer.device)
        return (time.perf_counter() - t0) / steps

    w = scale["width"]
    out: dict[str, float] = {}
    sup = per_step(TrainConfig(epochs=1, batch_size=128), build_model("resnet18", 10, width=w))
    out["plain training"] = sup * -(-n_train // 128)
    base = build_model("resnet18", 10, width=w)
    simclr = torch.nn.Sequential(Backbone(base), projection_head(classifier_head(base).in_features))
    out["DBD SimCLR"] = per_step(TrainConfig(epochs=1, batch_size=512, lr=0.4), simclr,
                                 simclr_step(trainer, 0.5, True, StrongAugment())) * -(-n_train // 512)
    mix = MixMatch(trainer, images, 10, MixMatchParams(), steps_per_epoch=1024)
    mix.set_unlabelled(torch.arange(len(images)))
    out["MixMatch (1024 iterations)"] = per_step(
        TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=0.002, schedule="constant"),
        build_model("resnet18", 10, width=w), mix) * 1024
    model = build_model("resnet18", 10, width=w)
    n = scale["feature_images"]
    layer_features(trainer.prepare_model(model), trainer, images[:min(n, 256)])  # warm-up
    t0 = time.perf_counter()
    feats, _, _ = layer_features(model, trainer, images.repeat(-(-n // len(images)), 1, 1, 1)[:n])
    out["PIPD feature extraction"] = (time.perf_counter() - t0) * n_train / n
    out["feature columns"] = feats.shape[1]
    return {k: round(v, 2) for k, v in out.items()}


def dev_run(scale: dict, data_root: str | None, work: Path) -> dict[str, Any]:
    """The covering subset as a development run on this device."""
    extra = ["--data-root", data_root] if data_root else []
    from benchmark.catalog import catalog

    own = catalog(builtin=True)  # the suite's own methods (no plugin)
    run_cells(["--fast-dev-run", "--grid", scale["grid"], "--attacks", ",".join(own["attacks"]),
               "--defenses", "no_defense", *scale["sets"], *extra], work / "dev")
    builtin = list(own["defenses"])
    recs = run_cells(["--fast-dev-run", "--grid", scale["grid"], "--attacks", "badnets",
                      "--defenses", ",".join(builtin), *scale["sets"], *extra], work / "dev")
    return {"cells": len(recs), "failed": {f"{r['config']['attack']}/{r['config']['defense']}": r["error"]
                                           for r in recs if r["status"] != "ok"},
            "precision": sorted({r["hardware"]["precision"] for r in recs if r["status"] == "ok"})}


def ray_packing(scale: dict, data_root: str | None, work: Path) -> dict[str, Any]:
    from benchmark.cli import main

    extra = ["--data-root", data_root] if data_root else []
    t0 = time.perf_counter()
    code = main(["--grid", "smoke", "--attacks", "badnets,blended", "--defenses", "no_defense,pipd",
                 "--gpus-per-trial", "0.25", "--results", str(work / "ray"), *scale["sets"], *extra])
    return {"exit_code": code, "seconds": round(time.perf_counter() - t0, 1), "trials": 4}


def calibration(report: dict[str, Any], scale: dict) -> dict[str, Any]:
    """The supervised img/s of the full configuration's speed key, for ``--dry-run --calibration``."""
    from benchmark.cost import device_kind, speed_key
    from benchmark.spec import CellSpec

    spec = CellSpec.resolve(scale["grid"], "badnets", "no_defense", 0)
    tp = report.get("throughput", {})
    precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    batch = spec.train.batch_size if spec.train.batch_size in scale["batches"] else scale["batches"][0]
    speed = tp.get(f"trainer {precision} b{batch}")
    return {"device_kind": device_kind(), "img_per_s": {speed_key(spec): speed} if speed else {},
            "source": "benchmark.gpucheck throughput, the trainer at the preset's batch size"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="CIFAR-10 (folder or archive); random "
                   "images for the throughput parts when absent")
    p.add_argument("--out", default=None, help="the JSON (default docs/results/perf/gpu-<device>.json)")
    p.add_argument("--scale", choices=list(SCALES), default=None,
                   help="gpu (default with a GPU) or tiny (default without: the CPU fallback)")
    p.add_argument("--skip", default="", help="parts to leave out, comma-separated")
    args = p.parse_args(argv)
    scale_name = args.scale or ("gpu" if torch.cuda.is_available() else "tiny")
    scale = SCALES[scale_name]
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{platform.machine()}"
    out = Path(args.out or f"docs/results/perf/gpu-{name.replace(' ', '-').lower()}.json")
    report: dict[str, Any] = {"device": name, "scale": scale_name, "torch": torch.__version__,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "skipped": {}}
    skip = set(filter(None, args.skip.split(",")))
    have_ray = importlib.util.find_spec("ray") is not None
    print(f"GPU check on {name} (scale {scale_name}); writing {out}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parts = {"throughput": (throughput, scale, args.data_root),
                 "cell": (cell, scale, args.data_root, work),
                 "phases": (phases, scale, args.data_root),
                 "dev_run": (dev_run, scale, args.data_root, work),
                 "ray": (ray_packing, scale, args.data_root, work)}
        for part, (fn, *fargs) in parts.items():
            if part in skip:
                report["skipped"][part] = "--skip"
            elif part == "ray" and not have_ray:
                report["skipped"][part] = "Ray is not installed here"
            elif part == "ray" and not torch.cuda.is_available():
                report["skipped"][part] = "no GPU to pack trials on"
            else:
                timed(part, report, fn, *fargs)
    for part, why in report["skipped"].items():
        print(f"skipped {part}: {why}", flush=True)
    report["calibration"] = calibration(report, SCALES["gpu"] if scale_name == "gpu" else scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}", flush=True)
    return 0 if not any(isinstance(v, dict) and "error" in v for v in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
