"""A cache of ``--dry-run`` plans, so a repeated dry-run answers without importing torch.

Planning a grid resolves every cell's config through the attack and defense registries, which
import torch (~3 s on a 2-core machine, most of a dry-run). A plan depends only on the command
line and the code, so it is stored under ``<cache dir>/plans/`` keyed by both (the arguments
that name cells, and the size and mtime of every source file of the suite); a later dry-run with
the same key prints it with each cell's status read fresh from the results folder. Any change
to the code or the arguments misses the cache and plans from scratch. Grids that load plugins
always plan from scratch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmark.cache import atomic_write_bytes, config_hash
from benchmark.paths import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("attacks", "defenses", "benchmark")
# options that do not change which cells a grid has or what they are
NOT_PLANNING = {"--results", "--data-root", "--cache-dir", "--executor", "--address",
                "--gpus-per-trial", "--cpus-per-trial", "--device", "--report", "--ship-data"}
FLAGS = {"--dry-run", "--no-download", "--save-models"}


def option(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` (the last one given)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def planning_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in NOT_PLANNING:
            skip = "=" not in arg
            continue
        if name not in FLAGS:
            out.append(arg)
    return out


def code_fingerprint() -> list[tuple[str, int, int]]:
    files = sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py"))
    return [(str(p.relative_to(ROOT)), st.st_size, st.st_mtime_ns) for p in files
            for st in (p.stat(),)]


def plan_path(argv: list[str]) -> Path:
    key = config_hash({"args": planning_args(argv), "code": code_fingerprint(),
                       "python": sys.version})
    cache = Path(option(argv, "--cache-dir") or default_cache_dir()).expanduser()
    return cache / "plans" / f"{key}.json"


def usable(argv: list[str]) -> bool:
    return "--dry-run" in argv and not {"-h", "--help"} & set(argv) \
        and not any(a.split("=", 1)[0] == "--plugin" for a in argv)


def save_plan(argv: list[str], cells: list[tuple[str, str]]) -> None:
    """Store a finished plan: (cell id, the text after its status) per cell."""
    if usable(argv):
        try:
            atomic_write_bytes(plan_path(argv), json.dumps({"cells": cells}).encode())
        except OSError:  # an unwritable cache only costs the next dry-run its speed
            pass


def print_plan(cells: list[tuple[str, str]], results: Path) -> None:
    from benchmark.store import ResultStore

    store = ResultStore(results)
    todo = 0
    for cid, text in cells:
        status = store.status(cid)
        todo += status != "ok"
        print(f"{cid}  {status:6}  {text}")
    print(f"{len(cells)} cell(s): {len(cells) - todo} done, {todo} to run")


def cached_dry_run(argv: list[str]) -> int | None:
    """Print a stored plan for this dry-run (0), or None when there is none to use."""
    if not usable(argv):
        return None
    try:
        cells = json.loads(plan_path(argv).read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    print_plan([(str(c), str(t)) for c, t in cells], Path(option(argv, "--results") or "results"))
    return 0
