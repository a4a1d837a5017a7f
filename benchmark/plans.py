"""What ``--dry-run`` prints: each cell's status, and with measured speeds its estimate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class WorkCounts:
    """The work ledger of a cell's development run, by the development run's id: the results
    folder's own development runs first, then the counts committed with the suite
    (``benchmark/work/<preset>.json``, ``python -m benchmark.cost work``), so a fresh clone has
    an estimate of every preset cell they cover."""

    def __init__(self, results: Path | None) -> None:  # None: the committed counts only
        from benchmark.cost import committed_work
        from benchmark.devrun import FOLDER
        from benchmark.store import ResultStore

        self.dev = ResultStore(results / FOLDER) if results is not None else None
        self.committed = committed_work()
        self.used = {"here": 0, "committed": 0, "scaled": 0}
        # dev id -> (the CIFAR-10 twin's dev id, training-set ratio, dataset): see ``stand_in``
        self.stand_ins: dict[str, tuple[str, float, str]] = {}

    def _own(self, dev_id: str) -> tuple[str, list[dict[str, Any]] | None]:
        rec = self.dev.read(dev_id) if self.dev is not None else None
        if rec is not None and rec.get("status") == "ok":
            return "here", rec["fast_dev_run"]["work"]
        return "committed", self.committed.get(dev_id)

    def get(self, dev_id: str, count: bool = True) -> list[dict[str, Any]] | None:
        """The cell's work ledger, or None; ``count``: note where it came from (``used``)."""
        from benchmark.cost import scaled

        source, work = self._own(dev_id)
        if work is None and dev_id in self.stand_ins:
            twin, ratio, dataset = self.stand_ins[dev_id]
            work = self._own(twin)[1]
            source, work = "scaled", None if work is None else scaled(work, ratio, dataset)
        if work is not None and count:
            self.used[source] += 1
        return work

    def has(self, dev_id: str) -> bool:
        twin = self.stand_ins.get(dev_id)
        return self._ran(dev_id) or (twin is not None and self._ran(twin[0]))

    def _ran(self, dev_id: str) -> bool:
        return dev_id in self.committed or (self.dev is not None and self.dev.status(dev_id) == "ok")

    def stand_in(self, dev_id: str, twin_id: str, ratio: float, dataset: str) -> None:
        """Count a cell that has no ledger of its own (another dataset's) as its CIFAR-10 twin's
        (the same attack, defense and model at the preset's settings), each phase's images times
        ``ratio``: the datasets' training-set sizes. The recipe is the preset's on every dataset,
        so what changes is how many images an epoch holds."""
        self.stand_ins[dev_id] = (twin_id, ratio, dataset)

    @property
    def ratios(self) -> dict[str, float]:
        """Each stood-in dataset's training-set ratio."""
        return {dataset: ratio for _, ratio, dataset in self.stand_ins.values()}


def print_plan(cells: list[tuple[str, ...]], results: Path, counts: WorkCounts,
               speeds: dict[str, float] | None = None, device: str = "", speed_note: str = "") -> None:
    """Each cell's status, and with ``speeds`` (img/s by speed key) the estimated time of each
    cell to run from its work counts (``counts``, ``benchmark.cost``), and the total."""
    from benchmark.cost import grid_units
    from benchmark.progress import duration
    from benchmark.sources import changed_note, stale
    from benchmark.store import ResultStore

    store = ResultStore(results)
    status = [store.status(cid) for cid, *_ in cells]
    seconds: list[float | None] = [None] * len(cells)
    if speeds is not None:
        works = [counts.get(extra[0]) if extra and st != "ok" else None
                 for (_, _, *extra), st in zip(cells, status, strict=True)]
        # a done cell's artifacts are in the cache: a cell to run that shares them reuses them
        done = [counts.get(extra[0], count=False) for (_, _, *extra), st in zip(cells, status, strict=True)
                if extra and st == "ok"]
        made = {e["artifact"] for work in done for e in work or [] if e.get("artifact")}
        for i, u in enumerate(grid_units(works, made)):
            speed = speeds.get(cells[i][3]) if len(cells[i]) > 3 else None
            seconds[i] = u / speed if u is not None and speed else None
    todo, total, unknown = 0, 0.0, 0
    changed: list[tuple[str, str, str]] = []
    for (cid, text, *extra), st, sec in zip(cells, status, seconds, strict=True):
        todo += st != "ok"
        if st == "ok" and len(extra) > 2:  # today's source digests of the cell's methods
            changed += stale(store.read(cid) or {}, json.loads(extra[2]))
        est = ""
        if speeds is not None and extra and st != "ok":
            if sec is not None:
                total += sec
                est = f"  ~{duration(sec)}"
            else:
                unknown += 1
                est = "  ~?"
        print(f"{cid}  {st:6}  {text}{est}")
    print(f"{len(cells)} cell(s): {len(cells) - todo} done, {todo} to run")
    note = changed_note(changed)
    if note:
        print(note)
    if speeds is not None and todo:
        hours = total / 3600
        print(f"estimated time to run on {device}: {duration(total)} ({hours:.2f} device-hours)"
              + (f"; {unknown} cell(s) without an estimate (~?: run the same grid with "
                 f"--fast-dev-run first, seconds a cell)" if unknown else ""))
        words = {"here": "from this folder's development runs",
                 "committed": "from the committed development runs (benchmark/work/)",
                 "scaled": "scaled from CIFAR-10's by training-set size (" + ", ".join(
                     f"{d} x{r:.3f}" for d, r in sorted(counts.ratios.items())) + "; a development "
                     "run on the dataset counts them exactly)"}
        sources = [f"{n} {words[k]}" for k, n in counts.used.items() if n]
        if sources:
            print(f"work counts: {'; '.join(sources)}")
        if speed_note:
            print(speed_note)
