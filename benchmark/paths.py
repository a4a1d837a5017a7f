"""Default folders, without importing torch (the dry-run fast path reads them)."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_root() -> Path:
    env = os.environ.get("BDBENCH_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "backdoor-defense-bench" / "data"


def default_cache_dir() -> Path:
    env = os.environ.get("BDBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "backdoor-defense-bench"
