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
                "--gpus-per-trial", "--cpus-per-trial", "--device", "--report", "--ship-data",
                "--calibration"}
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


def save_plan(argv: list[str], cells: list[tuple[str, ...]]) -> None:
    """Store a finished plan: (cell id, the text after its status, its development run's id,
    its speed key, its methods' source digests as JSON) per cell."""
    if usable(argv):
        try:
            atomic_write_bytes(plan_path(argv), json.dumps({"cells": cells}).encode())
        except OSError:  # an unwritable cache only costs the next dry-run its speed
            pass


def print_plan(cells: list[tuple[str, ...]], results: Path, speeds: dict[str, float] | None = None,
               device: str = "") -> None:
    """Each cell's status, and with ``speeds`` (img/s by speed key) the estimated time of each
    cell to run from its development run's work (``benchmark.cost``), and the total."""
    from benchmark.cost import units
    from benchmark.devrun import FOLDER
    from benchmark.progress import duration
    from benchmark.sources import changed_note, stale
    from benchmark.store import ResultStore

    store, dev = ResultStore(results), ResultStore(results / FOLDER)
    todo, total, unknown = 0, 0.0, 0
    changed: list[tuple[str, str, str]] = []
    for cid, text, *extra in cells:
        status = store.status(cid)
        todo += status != "ok"
        if status == "ok" and len(extra) > 2:  # today's source digests of the cell's methods
            changed += stale(store.read(cid) or {}, json.loads(extra[2]))
        est = ""
        if speeds is not None and extra and status != "ok":
            rec = dev.read(extra[0])
            speed = speeds.get(extra[1])
            if rec is not None and rec.get("status") == "ok" and speed:
                seconds = units(rec["fast_dev_run"]["work"]) / speed
                total += seconds
                est = f"  ~{duration(seconds)}"
            else:
                unknown += 1
                est = "  ~?"
        print(f"{cid}  {status:6}  {text}{est}")
    print(f"{len(cells)} cell(s): {len(cells) - todo} done, {todo} to run")
    note = changed_note(changed)
    if note:
        print(note)
    if speeds is not None and todo:
        hours = total / 3600
        print(f"estimated time to run on {device}: {duration(total)} ({hours:.2f} device-hours)"
              + (f"; {unknown} cell(s) without an estimate (~?: run the same grid with "
                 f"--fast-dev-run first, seconds a cell)" if unknown else ""))


def has_dev_runs(cells: list, results: Path) -> bool:
    """Whether any cell of a plan has a finished development run (then estimates are shown)."""
    from benchmark.devrun import FOLDER
    from benchmark.store import ResultStore

    dev = ResultStore(results / FOLDER)
    return any(len(c) > 2 and dev.status(c[2]) == "ok" for c in cells)


def cached_speeds(argv: list[str]) -> tuple[dict[str, float], str] | None:
    """(img/s by speed key, the device's name) from ``--calibration`` or the throughputs measured
    here before; None when this machine has none measured yet (measuring needs torch)."""
    calibration = option(argv, "--calibration")
    try:
        if calibration:
            data = json.loads(Path(calibration).read_text())
            return data["img_per_s"], data["device_kind"]
        every = json.loads((Path(option(argv, "--cache-dir") or default_cache_dir()).expanduser()
                            / "throughput.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    kinds = list(every)
    return (every[kinds[0]], kinds[0]) if len(kinds) == 1 else None


def cached_dry_run(argv: list[str]) -> int | None:
    """Print a stored plan for this dry-run (0), or None when there is none to use."""
    if not usable(argv):
        return None
    try:
        cells = json.loads(plan_path(argv).read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    results = Path(option(argv, "--results") or "results")
    if "--fast-dev-run" in argv:
        from benchmark.devrun import FOLDER

        results = results / FOLDER
    speeds = None
    if "--fast-dev-run" not in argv and has_dev_runs(cells, results):
        speeds = cached_speeds(argv)
        if speeds is None or any(len(c) > 3 and c[3] not in speeds[0] for c in cells):
            return None  # a throughput to measure first: the full path does
    print_plan([tuple(str(v) for v in c) for c in cells], results, *(speeds or (None,)))
    return 0
