"""Tiny-ImageNet (200 classes, 64 px, 500 training and 50 validation images a class): the
published zip's layout, ``tiny-imagenet-200/`` with ``wnids.txt``, ``train/<wnid>/images/*.JPEG``
and ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``; its validation set is the
test set (the published test set has no labels). Or an ImageFolder tree of it."""

from __future__ import annotations

import zipfile
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

MEAN, STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _find(root: Path) -> Path | None:
    for d in (root / "tiny-imagenet-200", root):
        if (d / "wnids.txt").is_file() and (d / "val" / "val_annotations.txt").is_file():
            return d
    return imagefolder_under(root, ("tiny-imagenet", "tiny_imagenet"))


def _fetch(root: Path) -> None:
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    archive = root / "tiny-imagenet-200.zip"
    urllib.request.urlretrieve(URL, archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(root)


def load_tiny_imagenet(data_root: Path, cache_dir: Path, *, download: bool = True,
                       **_: object) -> tuple[dict[str, ImageSet], str]:
    path = find_or_download(data_root, _find, download, _fetch,
                            "tiny-imagenet-200/ (wnids.txt, val/val_annotations.txt) or an "
                            "ImageFolder tree", "Tiny-ImageNet")
    if not (path / "wnids.txt").is_file():
        return cache_imagefolder(path, cache_dir, "tiny_imagenet", None,
                                 {"train": "train", "test": "test"}), f"tiny_imagenet-imagefolder:{path}"
    classes = sorted((path / "wnids.txt").read_text().split())
    train = [(c, p) for c in classes for p in sorted((path / "train" / c / "images").glob("*.JPEG"))]
    known = set(classes)
    test = []
    for line in (path / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in known:
            raise DataNotFoundError(f"{path / 'val' / 'val_annotations.txt'}: unreadable line {line!r}")
        test.append((fields[1], path / "val" / "images" / fields[0]))
    return cache_items(path, cache_dir, "tiny_imagenet", None, {"train": train, "test": sorted(test)},
                       classes), f"tiny_imagenet:{path}"


DATASETS.register("tiny_imagenet", DatasetEntry(load_tiny_imagenet, MEAN, STD, downloads=True,
                                                  sizes=(100_000, 10_000), side=64))
