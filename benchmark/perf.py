"""Throughput benchmark: ``python -m benchmark.perf trainer``.

Prints, on the same model and data, images/s of
- ``trainer <mode>``: this suite's trainer (uint8 tensor on the device, batched crop/flip there)
  in each training mode asked for (``--modes``): ``fp32``, ``bf16`` (autocast; where the device
  has no native bf16 the trainer runs fp32 instead, and the row says so), ``compile``
  (``torch.compile`` of the train step, fp32) and ``compile+bf16``, each with its warm-up time;
- ``compute bound fp32`` / ``bf16``: forward + backward + step on ready, normalised batches (no
  data work), the bf16 one with autocast forced on whatever the device supports: the raw cost
  of bf16 on this machine;
- ``peer loop``: a DataLoader + torchvision PIL transforms loop, written the way the peer
  suites write it (NCHW, fp32, per-image RandomCrop/RandomHorizontalFlip/ToTensor/Normalize).
A benchmark, not a test: the targets (trainer >= 95% of the bound and >= 1.3x the peer loop on
CPU; >= 3x the peer loop on a GPU) are read off its output.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.data import CIFAR10_MEAN, CIFAR10_STD
from benchmark.models import build_model
from benchmark.train import TrainConfig, Trainer, cpu_native_bf16, resolve_precision

MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "compile": ("fp32", True),
         "compile+bf16": ("bf16", True)}


def load_images(n: int, data_root: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` CIFAR-10 training images if a copy is found, else random ones of the same shape."""
    from benchmark.data import default_cache_dir, default_data_root, load_dataset

    try:
        ds = load_dataset("cifar10", data_root or default_data_root(), default_cache_dir(),
                          download=False)
        return ds.train.images[:n].clone(), ds.train.labels[:n].clone(), "cifar10"
    except Exception:  # noqa: BLE001 - throughput does not depend on the pixel values
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (n,), generator=g), "random")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_trainer(trainer: Trainer, width: int, images: torch.Tensor, labels: torch.Tensor,
                  batch: int, precision: str, compile: bool, model: torch.nn.Module | None = None,
                  warmup_batches: int = 5) -> tuple[float, float]:
    """(img/s of a timed epoch, seconds of the warm-up epoch before it: compiling); ``model``
    defaults to ResNet-18 at ``width``."""
    model = model if model is not None else build_model("resnet18", 10, width=width)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.05, precision=precision, compile=compile)
    t0 = time.perf_counter()
    trainer.fit(model, images[: batch * warmup_batches], labels[: batch * warmup_batches], cfg)  # warm-up
    sync(trainer.device)
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.fit(model, images, labels, cfg)
    sync(trainer.device)
    return len(images) / (time.perf_counter() - t0), warmup


def bench_compute(trainer: Trainer, width: int, images: torch.Tensor, labels: torch.Tensor,
                  batch: int, bf16: bool) -> float:
    model = trainer.prepare_model(build_model("resnet18", 10, width=width))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x_all = trainer.normalize(trainer.to_device(images))
    y_all = trainer.to_device(labels)
    batches = [(x_all[i:i + batch], y_all[i:i + batch]) for i in range(0, len(images), batch)]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with trainer.autocast("bf16" if bf16 else "fp32"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for x, y in batches[:5]:
        step(x, y)
    sync(trainer.device)
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    sync(trainer.device)
    return len(images) / (time.perf_counter() - t0)


class _PILDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does: HWC uint8 arrays, a PIL image per item, transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:  # noqa: ANN001
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):  # noqa: ANN204
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def bench_peer_loop(device: torch.device, width: int, images: torch.Tensor, labels: torch.Tensor,
                    batch: int, workers: int) -> float:
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    ds = _PILDataset(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=False,
                                         persistent_workers=workers > 0)
    model = build_model("resnet18", 10, width=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)

    def epoch(limit: int | None = None) -> int:
        seen = 0
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        return seen

    epoch(limit=5)  # warm-up (also starts the workers)
    sync(device)
    t0 = time.perf_counter()
    seen = epoch()
    sync(device)
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["trainer"])
    p.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = paper)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=5120, help="images per timed epoch")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the peer loop")
    p.add_argument("--device", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--repeats", type=int, default=1, help="best of N timings of each")
    p.add_argument("--modes", default="fp32,bf16,compile,compile+bf16",
                   help=f"trainer modes to time, comma-separated: {', '.join(MODES)}")
    p.add_argument("--bound-images", type=int, default=1280,
                   help="images for the bf16 compute bound where bf16 is emulated (slow)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; valid: {', '.join(MODES)}")
    images, labels, source = load_images(args.images, args.data_root)
    trainer = Trainer(CIFAR10_MEAN, CIFAR10_STD, device=args.device)
    dev = trainer.device
    if trainer.cuda:
        where = torch.cuda.get_device_name(dev)
    else:
        where = (f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
                 f"native bf16: {'yes' if cpu_native_bf16() else 'no'}")
    print(f"device {dev} ({where}), torch {torch.__version__}, ResNet-18 width {args.width}, "
          f"batch {args.batch_size}, {len(images)} {source} images")
    res: dict[str, float | str] = {}

    def show(name: str, value: float, extra: str = "") -> None:
        res[name] = value
        print(f"  {name:22s} {value:9.1f} img/s{extra}", flush=True)

    measured: dict[tuple[str, bool], str] = {}  # what actually ran -> the row that timed it
    for mode in modes:
        precision, compile_ = MODES[mode]
        used, _ = resolve_precision(precision, dev)
        if (used, compile_) in measured:  # e.g. bf16 that falls back to fp32: nothing new to time
            print(f"  {'trainer ' + mode:22s} runs as {measured[used, compile_]!r} here "
                  f"({precision} -> {used}: no native {precision})", flush=True)
            res[f"trainer {mode}"] = res[measured[used, compile_]]
            continue
        runs = [bench_trainer(trainer, args.width, images, labels, args.batch_size, precision,
                              compile_) for _ in range(args.repeats)]
        speed, warm = max(r[0] for r in runs), runs[0][1]
        measured[used, compile_] = f"trainer {mode}"
        res[f"warmup_s {mode}"] = warm
        show(f"trainer {mode}", speed, f"   (warm-up epoch of 5 batches: {warm:.1f} s)")
    native_bf16 = trainer.cuda or cpu_native_bf16()
    for bf16 in (False, True):
        n = len(images) if native_bf16 or not bf16 else args.bound_images  # emulated: slow
        name = f"compute bound {'bf16' if bf16 else 'fp32'}"
        show(name, max(bench_compute(trainer, args.width, images[:n], labels[:n], args.batch_size,
                                     bf16) for _ in range(args.repeats)),
             f"   (autocast forced; {n} images)" if bf16 and not native_bf16 else "")
    show("peer loop", max(bench_peer_loop(dev, args.width, images, labels, args.batch_size,
                                          args.workers) for _ in range(args.repeats)))
    base = res.get("trainer fp32")
    if base:
        best = max((k for k in res if k.startswith("trainer ")), key=lambda k: res[k])
        res["best_mode"] = best
        print(f"  trainer fp32 / compute bound fp32 = {base / res['compute bound fp32']:.3f}   "
              f"trainer fp32 / peer loop = {base / res['peer loop']:.2f}x   "
              f"fastest: {best} ({res[best] / base:.2f}x fp32)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(args), "device_name": str(dev), "source": source, **res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
