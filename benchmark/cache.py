"""Content addressing: config hashes and a cache of artifacts computed once and reused.

An artifact (poisoned set, trained generator, pre-isolation model, ...) is keyed by the hash
of everything it depends on. Concurrent trials asking for the same artifact wait on a file lock
while the first computes it; files are written to a temp name and renamed, so an interrupted
run never leaves a half-written artifact behind.

A cache folder may be shared, so what it holds is not trusted: artifacts are tensors, plain
containers and the dataclasses registered with ``safe_artifact``, loaded with
``torch.load(weights_only=True)`` (a planted pickle is refused, never run), and each has its
SHA-256 beside it. An artifact that does not verify or load is set aside as ``<file>.corrupt``
with a warning and computed again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from benchmark.devrun import ArtifactCollision


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


# The fields each method's identity hashed when identities stopped being declared field by field
# (benchmark/keyed_fields.json, written once and never edited): they enter the hash at every value,
# so the records made before keep their ids. Every other field (one added to a method since, every
# field of a method registered since, a plugin's) enters it only where it differs from its
# default: a new option at its default keeps every id, with nothing for its author to declare.
KEYED_FIELDS: dict[str, Any] = json.loads((Path(__file__).with_name("keyed_fields.json")).read_text())
_NO_DEFAULT = object()


def keyed_fields(kind: str, name: str = "") -> frozenset[str]:
    """The always-hashed fields of the training config (``kind`` "train") or of the attack or
    defense ``name`` (``kind`` "attacks" or "defenses"); empty for a method registered since."""
    entry = KEYED_FIELDS["train"] if kind == "train" else KEYED_FIELDS[kind].get(name, ())
    return frozenset(entry)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def hashed_fields(cls: type, values: dict[str, Any], keyed: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``values`` (a dict of ``cls``'s fields) minus the fields outside ``keyed`` that hold
    their default (compared as JSON: a tuple default equals the list a record reads back)."""
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items()
            if k in keyed or defaults.get(k, _NO_DEFAULT) is _NO_DEFAULT
            or canonical_json(v) != canonical_json(defaults[k])}


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


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder) for the block: yields
    True once held, or False at once when ``wait`` is off and another process holds it. The
    lock goes with the process, so a killed holder never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# dataclasses an artifact may contain besides tensors and plain containers (weights_only load)
SAFE_TYPES: list[type] = []


def safe_artifact(cls: type) -> type:
    """Class decorator: instances of ``cls`` may be stored in (and loaded from) the cache."""
    SAFE_TYPES.append(cls)
    return cls


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_owner(path: Path, kind: str, owner: str) -> None:
    """In a development run (``owner``: its preset): refuse an artifact that a cell of another
    preset made (two presets' cells never share an artifact unless its key misses what tells
    them apart)."""
    tag = path.with_suffix(".owner")
    if owner and tag.exists() and tag.read_text() != owner:
        raise ArtifactCollision(
            f"cache key collision: the {kind} artifact {path.stem} was made by a {tag.read_text()!r} "
            f"cell and is asked for by a {owner!r} cell; its key misses what tells them apart")


class ArtifactCache:
    """Artifacts under ``root`` by kind and key; ``owner`` (a development run's preset) tags
    what it makes and refuses another preset's artifacts (``ArtifactCollision``)."""

    def __init__(self, root: Path | str | None, owner: str = "",
                 ledger: list[dict[str, Any]] | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.owner = owner
        # the cell's work ledger (``Trainer.work``): what an artifact's computation adds is
        # tagged with the artifact and kept beside it, and a cell that loads the artifact gets
        # the same entries marked ``reused``, so a cell's ledger is its whole work whatever the
        # cache held, and a grid counts each artifact once (``benchmark.cost``)
        self.ledger = ledger

    def path(self, kind: str, key: Any) -> Path:
        assert self.root is not None
        return self.root / kind / f"{config_hash(key)}.pt"

    def _note_reused(self, path: Path) -> None:
        """A loaded artifact's work, as computing it noted it, into the ledger (once a cell)."""
        if self.ledger is None:
            return
        try:
            entries = json.loads(path.with_suffix(".work.json").read_text())
        except (OSError, ValueError):  # made before artifacts kept their work
            return
        present = {e.get("artifact") for e in self.ledger}
        self.ledger.extend({**e, "reused": True} for e in entries if e.get("artifact") not in present)

    def exists(self, kind: str, key: Any) -> bool:
        return self.root is not None and self.path(kind, key).exists()

    @staticmethod
    def _checksum_path(path: Path) -> Path:
        return path.with_suffix(".sha256")

    def load(self, path: Path) -> tuple[bool, Any]:
        """(True, value) for a verified, safely loaded artifact; (False, None) after setting an
        unusable one aside (checksum mismatch, truncated, not loadable without running code)."""
        try:
            check = self._checksum_path(path)
            if check.exists() and check.read_text().strip() != file_sha256(path):
                raise ValueError("checksum mismatch")
            import torch  # lazily: the record store (and the dry-run fast path) need no torch

            with torch.serialization.safe_globals(SAFE_TYPES):
                value = torch.load(path, weights_only=True, map_location="cpu")
            if not check.exists():  # written before checksums existed: record it now
                atomic_write_bytes(check, file_sha256(path).encode())
            return True, value
        except FileNotFoundError:
            return False, None  # set aside by another process meanwhile
        except Exception as exc:  # noqa: BLE001 - any unreadable artifact is recomputed
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            aside = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, aside)
                self._checksum_path(path).unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            print(f"warning: cache artifact {path} is unusable ({type(exc).__name__}: {reason}); "
                  f"set aside as {aside.name}, computing it again", file=sys.stderr, flush=True)
            return False, None

    def checkpoint(self, kind: str, key: Any, keep_final: bool = False) -> PartialArtifact | None:
        """Where the computation of ``kind``/``hash(key)`` keeps its progress (``Trainer.fit``'s
        epochs) until the artifact is written (``keep_final``: a fit with no artifact of its
        own keeps its last epoch too, until ``clear``); None without a cache folder."""
        if self.root is None:
            return None
        return PartialArtifact(self, self.partial_path(self.path(kind, key)), keep_final)

    @staticmethod
    def partial_path(path: Path) -> Path:
        """``<hash>.pt.partial`` (its checksum ``<hash>.pt.sha256``) beside artifact ``path``."""
        return path.with_name(path.name + ".partial")

    def get_or_create(self, kind: str, key: Any, compute: Callable[[], Any]) -> Any:
        """The artifact ``kind``/``hash(key)``: loaded if cached and sound, else computed and
        stored."""
        if self.root is None:
            return compute()
        path = self.path(kind, key)
        if path.exists():
            ok, value = self.load(path)
            if ok:
                check_owner(path, kind, self.owner)
                self._note_reused(path)
                return value
        with file_lock(path.with_suffix(".lock")):
            if path.exists():  # computed by another trial while we waited
                ok, value = self.load(path)
                if ok:
                    check_owner(path, kind, self.owner)
                    self._note_reused(path)
                    return value
            start = len(self.ledger) if self.ledger is not None else 0
            value = compute()
            import torch

            atomic_write(path, lambda f: torch.save(value, f))
            atomic_write_bytes(self._checksum_path(path), file_sha256(path).encode())
            if self.ledger is not None:
                tag = f"{kind}/{path.stem}"
                made = self.ledger[start:]
                for entry in made:  # entries of artifacts computed inside keep their own tag
                    entry.setdefault("artifact", tag)
                atomic_write_bytes(path.with_suffix(".work.json"), json.dumps(
                    [{k: v for k, v in e.items() if k != "reused"} for e in made]).encode())
            if self.owner:
                atomic_write_bytes(path.with_suffix(".owner"), self.owner.encode())
            PartialArtifact(self, self.partial_path(path)).clear()  # its computation's checkpoint
            with (path.parent / "index.jsonl").open("a") as index:
                index.write(canonical_json({"hash": path.stem, "key": key}) + "\n")
            return value


class PartialArtifact:
    """An artifact's computation in progress (a ``Trainer.Checkpoint``): saved atomically with
    its checksum, loaded as safely as an artifact (an unusable one is set aside and the
    computation starts over), removed once the artifact is written. One process at a time
    writes it: an artifact's computation holds the artifact's lock, and a defense's own fits
    are one cell's, which one process runs."""

    def __init__(self, cache: ArtifactCache, path: Path, keep_final: bool = False) -> None:
        self.cache, self.path, self.keep_final = cache, path, keep_final

    def load(self) -> Any | None:
        if not self.path.exists():
            return None
        ok, value = self.cache.load(self.path)
        return value if ok else None

    def save(self, state: Any) -> None:
        import torch

        atomic_write(self.path, lambda f: torch.save(state, f))
        atomic_write_bytes(self.cache._checksum_path(self.path), file_sha256(self.path).encode())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.cache._checksum_path(self.path).unlink(missing_ok=True)
