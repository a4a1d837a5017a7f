"""Content addressing: config hashes and a cache of artifacts computed once and reused.

An artifact (poisoned set, trained generator, pre-isolation model, ...) is keyed by the hash
of everything it depends on. Concurrent trials asking for the same artifact wait on a file lock
while the first computes it; files are written to a temp name and renamed, so an interrupted
run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


# Dataclass field metadata for an option added after results existed, whose default reproduces
# what the code did before it: left out of hashes while at that default, so finished records
# and cached artifacts keep their keys; any other value enters the hash (and re-keys).
OMIT_AT_DEFAULT = {"omit_at_default": True}


def hashed_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a dict of ``cls``'s fields) minus the ``OMIT_AT_DEFAULT`` fields at their default."""
    omit = {f.name: f.default for f in dataclasses.fields(cls) if f.metadata.get("omit_at_default")}
    return {k: v for k, v in values.items() if not (k in omit and v == omit[k])}


_UMASK = os.umask(0)  # the process umask: os has no getter, so set and restore once
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(file)`` into a temp file beside ``path``, then rename it into place: readers see
    the old file or the new one, never half of one. Permissions follow the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


class ArtifactCache:
    def __init__(self, root: Path | str | None) -> None:
        self.root = Path(root) if root is not None else None

    def path(self, kind: str, key: Any) -> Path:
        assert self.root is not None
        return self.root / kind / f"{config_hash(key)}.pt"

    def exists(self, kind: str, key: Any) -> bool:
        return self.root is not None and self.path(kind, key).exists()

    def get_or_create(self, kind: str, key: Any, compute: Callable[[], Any]) -> Any:
        """The artifact ``kind``/``hash(key)``: loaded if cached, else computed and stored."""
        if self.root is None:
            return compute()
        path = self.path(kind, key)
        if path.exists():
            return torch.load(path, weights_only=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if path.exists():  # computed by another trial while we waited
                    return torch.load(path, weights_only=False)
                value = compute()
                atomic_write(path, lambda f: torch.save(value, f))
                with (path.parent / "index.jsonl").open("a") as index:
                    index.write(canonical_json({"hash": path.stem, "key": key}) + "\n")
                return value
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
