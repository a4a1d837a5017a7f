"""Shared pieces of the dataset modules: finding a copy under the data root, the download
attempt, the one-line error when neither works."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmark.data import DataNotFoundError


def find_or_download(data_root: Path, find: Callable[[Path], Path | None], download: bool,
                     fetch: Callable[[Path], None], looked_for: str, name: str) -> Path:
    """The copy ``find`` sees under ``data_root``; else, with ``download``, ``fetch`` it there
    and look again; else one clear error naming what was looked for."""
    found = find(data_root)
    reason = "download disabled"
    if found is None and download:
        try:
            fetch(data_root)
        except Exception as exc:  # offline: the clear error below
            reason = f"download failed ({type(exc).__name__})"
        found = find(data_root)
    if found is None:
        raise DataNotFoundError(f"{name} not found under {data_root} (looked for {looked_for}; {reason}); "
                                "pass --data-root DIR or set BDBENCH_DATA to a folder holding it")
    return found


def imagefolder_under(root: Path, names: tuple[str, ...]) -> Path | None:
    """An ImageFolder tree (``train/``, ``test/``) at ``root`` or at one of its ``names``."""
    for d in (root, *(root / n for n in names)):
        if (d / "train").is_dir() and (d / "test").is_dir():
            return d
    return None
