"""What ``--dry-run`` prints: each cell's status, and with measured speeds its estimate."""

from __future__ import annotations

import json
from pathlib import Path


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
