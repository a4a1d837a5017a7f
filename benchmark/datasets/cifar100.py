"""CIFAR-100 (100 classes, 32 px): torchvision's python pickles (``cifar-100-python/`` with
``train``, ``test``, ``meta``; the fine labels), or an ImageFolder tree of it."""

from __future__ import annotations

import pickle
from pathlib import Path

from benchmark.data import (
    DATASETS,
    DatasetEntry,
    ImageSet,
    cache_imagefolder,
    find_or_download,
    imagefolder_under,
    read_cifar_pickles,
)

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _find(root: Path) -> Path | None:
    for d in (root / "cifar-100-python", root):
        if (d / "train").is_file() and (d / "meta").is_file():
            return d
    return imagefolder_under(root, ("cifar100", "cifar100-jpeg", "CIFAR100"))


def load_cifar100(data_root: Path, cache_dir: Path, *, download: bool = True,
                  **_: object) -> tuple[dict[str, ImageSet], str]:
    def fetch(root: Path) -> None:
        import torchvision

        torchvision.datasets.CIFAR100(str(root), train=True, download=True)

    path = find_or_download(data_root, _find, download, fetch,
                            "cifar-100-python/ or an ImageFolder tree train/ test/", "CIFAR-100")
    if (path / "meta").is_file():
        with open(path / "meta", "rb") as f:
            classes = pickle.load(f, encoding="latin1")["fine_label_names"]
        return ({split: ImageSet(*read_cifar_pickles([path / split], "fine_labels"), classes)
                 for split in ("train", "test")},
                f"cifar100-python:{path}")
    return cache_imagefolder(path, cache_dir, "cifar100", None, {"train": "train", "test": "test"}), \
        f"cifar100-imagefolder:{path}"


DATASETS.register("cifar100", DatasetEntry(load_cifar100, MEAN, STD, downloads=True,
                                             sizes=(50_000, 10_000)))
