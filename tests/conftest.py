"""Shared fixtures: tiny synthetic datasets written as real files, so loaders are exercised."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(min(2, os.cpu_count() or 1))

CLASSES = [f"c{i}" for i in range(10)]


def synthetic_images(n_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy images: each class has its own mean colour, plus noise."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(len(CLASSES), 3))
    xs, ys = [], []
    for c in range(len(CLASSES)):
        base = palette[c][:, None, None]
        noise = rng.normal(0, 25, size=(n_per_class, 3, size, size))
        xs.append(np.clip(base + noise, 0, 255).astype(np.uint8))
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


def write_imagefolder(root: Path, n_train: int, n_test: int, size: int = 32) -> Path:
    from PIL import Image

    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = synthetic_images(n, size, seed)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:05d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A CIFAR-10-shaped ImageFolder tree: 10 classes, 40 train / 10 test images each, 32x32."""
    return write_imagefolder(tmp_path_factory.mktemp("tiny_cifar"), 40, 10)


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


# ---- fault injection: what the fault tests did and what survived, printed after the run ----
FAULTS: dict[str, int] = {}


@pytest.fixture()
def faults() -> dict[str, int]:
    """Counters a fault test adds to (``faults["artifacts corrupted"] += 1``); the totals are
    printed at the end of the run (``pytest -m faults`` runs only these tests)."""
    class Counter(dict):
        def __missing__(self, key: str) -> int:
            return 0

        def __setitem__(self, key: str, value: int) -> None:
            FAULTS[key] = FAULTS.get(key, 0) + value - self.get(key, 0)
            super().__setitem__(key, value)

    return Counter()


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if FAULTS:
        terminalreporter.section("fault injection")
        terminalreporter.write_line("; ".join(f"{k} {v}" for k, v in FAULTS.items()))
