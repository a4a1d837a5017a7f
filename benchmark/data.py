"""Datasets as uint8 tensors (N, C, H, W) with int64 labels, decoded once and cached as .npy.

Sources for ``cifar10``: the standard python pickles (``cifar-10-batches-py``, what torchvision
downloads), an ImageFolder tree (``train/<class>/*``, ``test/<class>/*``) or a ``.tar.gz`` of one.
``imagefolder``: any ImageFolder tree (e.g. an ImageNet subset), resized to ``image_size`` and
cached as a memory-mapped array so that it never has to fit in RAM. Every other dataset is one
module of ``benchmark/datasets/`` registering a ``DatasetEntry``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from benchmark.cache import file_lock, safe_artifact
from benchmark.paths import default_cache_dir, default_data_root  # noqa: F401 (re-exported)
from benchmark.progress import Phase
from benchmark.registry import Registry, UsageError

T = TypeVar("T")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataNotFoundError(UsageError):
    """No usable copy of a dataset was found (and none could be downloaded)."""


@safe_artifact
@dataclass
class ImageSet:
    """A labelled image set: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass
class Dataset:
    name: str
    train: ImageSet
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""  # which copy the data came from (recorded with every result)
    info: dict = field(default_factory=dict)
    # the training images left out of a subset (clean, never poisoned): trusted-sample source
    held_out: ImageSet | None = None

    def held_out_per_class(self, n: int, seed: int) -> ImageSet | None:
        """A seeded draw of ``n`` held-out training images per class (None when there are no
        held-out images or too few of some class)."""
        if self.held_out is None:
            return None
        g = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(self.num_classes):
            rows = (self.held_out.labels == c).nonzero().flatten()
            if len(rows) < n:
                return None
            picks.append(rows[torch.randperm(len(rows), generator=g)[:n]])
        return self.held_out.subset(torch.cat(picks))

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


class DatasetEntry(NamedTuple):
    """A registered dataset: its loader ``(data_root, cache_dir, **options) -> (splits, source)``,
    the normalisation, its own ``data.*`` options with their defaults (beside the subset's
    ``train_size``, ``test_size``, ``subset_seed``), the model a grid uses on it by default,
    whether the loader can download it (it then takes ``download``), the images of its standard
    training and test splits (``--dry-run`` scales CIFAR-10's work counts by them for a cell
    without its own) and their side."""

    loader: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data: dict[str, Any] = {}
    default_model: str = "resnet18"
    downloads: bool = False
    sizes: tuple[int, int] | None = None  # (training, test) images; None: any size (ImageFolder)
    side: int = 32  # the images' side where ``data.image_size`` does not set it


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def stratified_subset(labels: torch.Tensor, size: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a seeded subset of ``size`` samples with class proportions preserved."""
    n = int(labels.shape[0])
    if size is None or size >= n:
        return None
    if size <= 0:
        raise UsageError(f"subset size must be positive, got {size}")
    gen = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    quota = (counts.double() * size / n).floor().long()
    remainder = size - int(quota.sum())
    if remainder:  # hand the leftover to the classes with the largest fractional share
        frac = counts.double() * size / n - quota.double()
        quota[frac.argsort(descending=True)[:remainder]] += 1
    picked = []
    for cls, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (labels == cls).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:q]])
    return torch.cat(picked).sort().values


# --------------------------------------------------------------------------------------------
# decoding and caching


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _decode(data: bytes | Path, size: int | None, stretch: bool = False) -> np.ndarray:
    """One image as uint8 (3, H, W); with ``size``, its shorter side to ``size`` and a centre
    crop (``stretch``: both sides to ``size``, as GTSRB's references resize)."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        img = img.convert("RGB")
        if stretch and size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        elif size is not None and img.size != (size, size):
            # shorter side to `size`, then a centre crop: keeps the aspect ratio undistorted
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _save_split(out: Path, split: str, items: list[tuple[str, bytes | Path]], classes: list[str],
                size: int | None, stretch: bool = False) -> None:
    """Decode ``items`` (class name, bytes or file) into ``{split}_images.npy`` (memory-mapped)."""
    index = {c: i for i, c in enumerate(classes)}
    first = _decode(items[0][1], size, stretch)
    tmp = out / f".{split}_images.npy.tmp"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), *first.shape))
    labels = np.empty(len(items), dtype=np.int64)
    phase = Phase(f"decode {split}", 1, len(items))
    for i, (cls, data) in enumerate(items):
        arr[i] = first if i == 0 else _decode(data, size, stretch)
        phase.step(1, i + 1)
        labels[i] = index[cls]
    arr.flush()
    del arr
    os.replace(tmp, out / f"{split}_images.npy")
    np.save(out / f"{split}_labels.npy", labels)


def _load_cached(out: Path, splits: Iterable[str], mmap: bool) -> dict[str, ImageSet] | None:
    meta = out / "classes.json"
    if not meta.exists():
        return None
    classes = json.loads(meta.read_text())
    sets = {}
    for split in splits:
        images = np.load(out / f"{split}_images.npy", mmap_mode="c" if mmap else None)
        labels = np.load(out / f"{split}_labels.npy")
        sets[split] = ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)
    return sets


def _split_entries(entries: Iterable[tuple[str, bytes | Path]], split_names: dict[str, str]
                   ) -> tuple[dict[str, list], list[str]]:
    """Group ``(relative path, payload)`` pairs of an ImageFolder tree by split and class."""
    by_split: dict[str, list] = {v: [] for v in set(split_names.values())}
    for rel, payload in entries:
        parts = Path(rel).parts
        for k in range(len(parts) - 2):
            if parts[k] in split_names and parts[-1].lower().endswith(IMAGE_SUFFIXES):
                by_split[split_names[parts[k]]].append((parts[k + 1], rel, payload))
                break
    classes = sorted({cls for items in by_split.values() for cls, _, _ in items})
    ordered = {s: [(c, p) for c, _, p in sorted(items, key=lambda t: (t[0], t[1]))]
               for s, items in by_split.items()}
    return ordered, classes


def _tree_entries(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            yield str(p.relative_to(root)), p


def _tar_entries(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                yield member.name, tar.extractfile(member).read()


def cache_imagefolder(source: Path, cache_dir: Path, name: str, size: int | None,
                      split_names: dict[str, str], mmap: bool = False) -> dict[str, ImageSet]:
    """Decode an ImageFolder tree (directory or tar archive) once; later calls read the cache."""
    def listing() -> tuple[dict[str, list], list[str]]:
        entries = _tar_entries(source) if source.is_file() else _tree_entries(source)
        return _split_entries(entries, split_names)

    return _decode_once(source, cache_dir, name, size, sorted(set(split_names.values())), listing,
                        mmap=mmap, missing="no images under a '{}' folder",
                        unreadable="not a readable image archive or folder")


def cache_items(source: Path, cache_dir: Path, name: str, size: int | None,
                items: dict[str, list[tuple[str, Path]]], classes: list[str], *,
                stretch: bool = False) -> dict[str, ImageSet]:
    """Decode listed files (split -> [(class name, file)]) once, as ``cache_imagefolder`` does a
    tree: for a layout whose labels are not folder names (a CSV, an annotations file)."""
    return _decode_once(source, cache_dir, name, size, sorted(items), lambda: (items, classes),
                        stretch=stretch, missing="no {} images", unreadable="unreadable image")


def _decode_once(source: Path, cache_dir: Path, name: str, size: int | None, splits: list[str],
                 listing: Callable[[], tuple[dict[str, list], list[str]]], *, mmap: bool = False,
                 stretch: bool = False, missing: str, unreadable: str) -> dict[str, ImageSet]:
    """The cached splits of ``source``, decoded from ``listing()`` (split -> [(class name, bytes
    or file)], class names) the first time. One decoder per dataset at a time: another process
    (a second grid, a Ray trial) waits, then reads what the first wrote, instead of rewriting
    files the first has mapped; a failed decode leaves nothing half-written in the cache."""
    out = cache_dir / "datasets" / f"{name}-{_fingerprint(source)}-{size or 'native'}"
    cached = _load_cached(out, splits, mmap)
    if cached is not None:
        return cached
    with file_lock(out.with_name(out.name + ".lock")):
        cached = _load_cached(out, splits, mmap)
        if cached is not None:
            return cached
        out.mkdir(parents=True, exist_ok=True)
        try:
            by_split, classes = listing()
            for split, items in by_split.items():
                if not items:
                    raise DataNotFoundError(f"{source}: {missing.format(split)}")
                _save_split(out, split, items, classes, size, stretch)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            shutil.rmtree(out, ignore_errors=True)
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise DataNotFoundError(f"{source}: {unreadable} "
                                    f"({type(exc).__name__}{': ' + first if first else ''})") from None
        except DataNotFoundError:
            shutil.rmtree(out, ignore_errors=True)
            raise
        (out / "classes.json").write_text(json.dumps(classes))
        return _load_cached(out, splits, mmap)


def read_cifar_pickles(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) and labels of CIFAR's python batches (torchvision's download):
    ``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100."""
    xs, ys = [], []
    for path in paths:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _load_cifar_pickles(folder: Path) -> dict[str, ImageSet]:
    with open(folder / "batches.meta", "rb") as f:
        classes = pickle.load(f, encoding="latin1")["label_names"]
    train = read_cifar_pickles([folder / f"data_batch_{i}" for i in range(1, 6)], "labels")
    test = read_cifar_pickles([folder / "test_batch"], "labels")
    return {"train": ImageSet(*train, classes), "test": ImageSet(*test, classes)}


def _is_imagefolder(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def _find_cifar10(root: Path) -> tuple[str, Path] | None:
    """Where a CIFAR-10 copy lies under ``root`` (or ``root`` itself, a tree or an archive)."""
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "archive", root
    for d in (root / "cifar-10-batches-py", root):
        if (d / "data_batch_1").exists():
            return "pickle", d
    tree = imagefolder_under(root, ("cifar10-jpeg", "cifar10", "CIFAR10"))
    if tree is not None:
        return "imagefolder", tree
    if root.is_dir():
        archives = sorted(p for p in root.iterdir() if "cifar" in p.name.lower()
                          and p.name.endswith((".tar.gz", ".tgz")) and "python" not in p.name)
        if archives:
            return "archive", archives[0]
    return None


def find_or_download(data_root: Path, find: Callable[[Path], T | None], download: bool,
                     fetch: Callable[[Path], None], looked_for: str, name: str) -> T:
    """The copy ``find`` sees under ``data_root``; else, with ``download``, ``fetch`` it there
    and look again; else one clear error naming what was looked for."""
    found = find(data_root)
    reason = "download disabled"
    if found is None and download:
        try:
            fetch(data_root)
        except Exception as exc:  # offline: the clear error below
            reason = f"download failed ({type(exc).__name__})"
        else:
            reason = ""
        found = find(data_root)
    if found is None:
        raise DataNotFoundError(f"{name} not found under {data_root} (looked for {looked_for}; {reason}); "
                                "pass --data-root DIR or set BDBENCH_DATA to a folder holding one of them")
    return found


def imagefolder_under(root: Path, names: tuple[str, ...]) -> Path | None:
    """An ImageFolder tree (``train/``, ``test/``) at ``root`` or at one of its ``names``."""
    for d in (root, *(root / n for n in names)):
        if d.is_dir() and _is_imagefolder(d):
            return d
    return None


def load_cifar10(data_root: Path, cache_dir: Path, *, download: bool = True,
                 **_: object) -> tuple[dict[str, ImageSet], str]:
    def fetch(root: Path) -> None:
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=True, download=True)

    kind, path = find_or_download(data_root, _find_cifar10, download, fetch, "cifar-10-batches-py/, "
                                  "an ImageFolder tree train/ test/, or a cifar*.tar.gz", "CIFAR-10")
    if kind == "pickle":
        return _load_cifar_pickles(path), f"cifar10-python:{path}"
    splits = cache_imagefolder(path, cache_dir, "cifar10", None, {"train": "train", "test": "test"})
    return splits, f"cifar10-{kind}:{path}"


def load_imagefolder(data_root: Path, cache_dir: Path, *, image_size: int = 224,
                     **_: object) -> tuple[dict[str, ImageSet], str]:
    if not data_root.exists():
        raise DataNotFoundError(f"ImageFolder root {data_root} does not exist; pass --data-root DIR")
    test_dir = next((n for n in ("test", "val", "validation") if (data_root / n).is_dir()), None)
    if not (data_root / "train").is_dir() or test_dir is None:
        raise DataNotFoundError(
            f"{data_root} is not an ImageFolder root: expected train/<class>/ and val/<class>/")
    splits = cache_imagefolder(data_root, cache_dir, "imagefolder", image_size,
                               {"train": "train", test_dir: "test"}, mmap=True)
    return splits, f"imagefolder:{data_root}"


DATASETS.register("cifar10", DatasetEntry(load_cifar10, CIFAR10_MEAN, CIFAR10_STD, downloads=True,
                                          sizes=(50_000, 10_000)))
DATASETS.register("imagefolder", DatasetEntry(load_imagefolder, IMAGENET_MEAN, IMAGENET_STD,
                                              data={"image_size": 224},
                                              default_model="resnet18_imagenet"))


Splits = dict[str, ImageSet]


def image_side(dataset: str, data: dict[str, Any]) -> int:
    """The side of a cell's images: its ``data.image_size``, else the dataset's own."""
    return int(data.get("image_size") or DATASETS.get(dataset).side)


def load_splits(name: str, data_root: Path, cache_dir: Path, **options: object) -> tuple[Splits, str]:
    """The full decoded splits of a registered dataset (from the decode cache when possible)
    and a description of where they came from."""
    return DATASETS.get(name).loader(Path(data_root), Path(cache_dir), **options)


def pack_splits(splits: Splits, source: str) -> dict:
    """The splits as numpy arrays and plain lists, for Ray's object store (numpy arrays are
    read there without a copy on the node that holds them)."""
    return {"source": source, "splits": {k: (v.images.numpy(), v.labels.numpy(), list(v.classes))
                                         for k, v in splits.items()}}


def unpack_splits(packed: dict) -> tuple[Splits, str]:
    splits = {k: ImageSet(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), classes)
              for k, (images, labels, classes) in packed["splits"].items()}
    return splits, f"{packed['source']} (shipped from the driver)"


def load_dataset(name: str, data_root: Path, cache_dir: Path, *, train_size: int | None = None,
                 test_size: int | None = None, subset_seed: int = 0,
                 splits: tuple[Splits, str] | None = None, **options: object) -> Dataset:
    """Load (from the cache when possible) and subsample a registered dataset; ``splits``:
    already decoded splits (e.g. shipped from a Ray driver) instead of reading ``data_root``."""
    mean, std = DATASETS.get(name).mean, DATASETS.get(name).std
    splits, source = splits or load_splits(name, data_root, cache_dir, **options)
    train, test, held_out = splits["train"], splits["test"], None
    for size, which in ((train_size, "train"), (test_size, "test")):
        idx = stratified_subset(splits[which].labels, size, subset_seed)
        if idx is not None:
            if which == "train":
                train = train.subset(idx)
                rest = torch.ones(len(splits["train"]), dtype=torch.bool)
                rest[idx] = False
                held_out = _LazySubset(splits["train"], rest.nonzero().flatten())
            else:
                test = test.subset(idx)
    return Dataset(name, train, test, mean, std, source, held_out=held_out)


class _LazySubset(ImageSet):
    """Rows of an ImageSet whose images are read only when asked for (the held-out training
    images: most cells never touch them)."""

    def __init__(self, base: ImageSet, index: torch.Tensor) -> None:
        self._base, self._index = base, index
        self.labels, self.classes = base.labels[index], base.classes

    @property
    def images(self) -> torch.Tensor:  # type: ignore[override]
        return self._base.images[self._index]

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self._base.images[self._index[index]], self.labels[index], self.classes)


from benchmark import datasets as _more  # noqa: E402,F401  (registers every other dataset)
