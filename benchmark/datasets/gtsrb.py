"""GTSRB (43 traffic-sign classes, unbalanced; images of 15-250 px). torchvision's layout:
``gtsrb/GTSRB/Training/<00000..00042>/*.ppm`` and ``gtsrb/GTSRB/Final_Test/Images/*.ppm`` with
the test labels in ``gtsrb/GT-final_test.csv`` (``Filename;...;ClassId``); or an ImageFolder tree.
Every image is resized to ``image_size`` (32) on both sides, as BackdoorBench and
backdoor-toolbox resize GTSRB (``Resize((32, 32))``: the aspect ratio is not kept)."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmark.data import (
    DATASETS,
    DataNotFoundError,
    DatasetEntry,
    ImageSet,
    cache_imagefolder,
    cache_items,
    find_or_download,
    imagefolder_under,
)

MEAN, STD = (0.3337, 0.3064, 0.3171), (0.2672, 0.2564, 0.2629)


def _find(root: Path) -> Path | None:
    for d in (root / "gtsrb", root):
        if (d / "GTSRB" / "Training").is_dir() and (d / "GT-final_test.csv").is_file():
            return d
    return imagefolder_under(root, ("gtsrb-folder", "GTSRB-folder"))


def load_gtsrb(data_root: Path, cache_dir: Path, *, download: bool = True, image_size: int = 32,
               **_: object) -> tuple[dict[str, ImageSet], str]:
    def fetch(root: Path) -> None:
        import torchvision

        for split in ("train", "test"):
            torchvision.datasets.GTSRB(str(root), split=split, download=True)

    path = find_or_download(data_root, _find, download, fetch,
                            "gtsrb/GTSRB/Training/, gtsrb/GT-final_test.csv or an ImageFolder tree",
                            "GTSRB")
    if not (path / "GTSRB").is_dir():
        return cache_imagefolder(path, cache_dir, "gtsrb", image_size, {"train": "train", "test": "test"}), \
            f"gtsrb-imagefolder:{path}"
    training = path / "GTSRB" / "Training"
    classes = sorted(d.name for d in training.iterdir() if d.is_dir())
    train = [(c, p) for c in classes for p in sorted((training / c).glob("*.ppm"))]
    images = path / "GTSRB" / "Final_Test" / "Images"
    with open(path / "GT-final_test.csv") as f:
        rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
    try:
        test = [(classes[int(r["ClassId"])], images / r["Filename"]) for r in rows]
    except (KeyError, IndexError, ValueError) as exc:
        raise DataNotFoundError(f"{path / 'GT-final_test.csv'}: not GTSRB's test labels ({exc})") from None
    return cache_items(path, cache_dir, "gtsrb", image_size, {"train": train, "test": test}, classes,
                       stretch=True), f"gtsrb:{path}"


DATASETS.register("gtsrb", DatasetEntry(load_gtsrb, MEAN, STD, data={"image_size": 32}, downloads=True,
                                          sizes=(39_209, 12_630)))
