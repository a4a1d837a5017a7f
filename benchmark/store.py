"""The results store: one JSON record per cell, ``<results>/records/<cell id>.json``.

Records are written atomically (temp file + rename), so an interrupted grid never leaves a
partial record; a re-run skips every cell whose record says ``ok`` and retries failed ones.
Records are a contract (``RECORD_KEYS``, ``SCHEMA``): one that lacks a required key is reported
and treated as not done. A process runs a cell only while it holds the cell's lock
(``claim``), so two grids on one results folder never train a cell twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmark.cache import atomic_write_bytes, file_lock


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON readers reject them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


SCHEMA = 1  # bumped when a key below changes meaning; records without one are schema 1

# The keys of a record other tools may read (docs/running.md's list is checked against this one).
RECORD_KEYS: dict[str, str] = {
    "schema": "record format version (absent in the earliest records: 1)",
    "id": "the cell id: hash of the resolved config",
    "status": "ok or failed (failed records carry error and traceback)",
    "config": "the resolved cell config: dataset, model, attack, defense, seed and every option",
    "metrics": "ca, asr, tpr, fpr (fractions in [0, 1]), r_acc, auroc, best-threshold rates",
    "isolation": "per isolation step: masks.<name> with TPR, FPR, precision and counts",
    "curves": ("per-phase lists of per-epoch training stats (loss, accuracy, CA/ASR; where a "
               "defense re-splits: split_tpr/fpr/auroc, split_score_poisoned/benign)"),
    "defense_info": "what the defense reports about itself (title, reuse of artifacts, ...)",
    "attack_info": "rate_of, clean_label, poisoned and cover counts",
    "data_source": "which copy of the dataset the cell read",
    "timings": "seconds per stage and in total; defense_phases: the defense's time by phase",
    "versions": "python, torch and package versions",
    "sources": "digests of the attack's and the defense's code (benchmark.sources)",
    "facts": ("what the record means, fixed when written: preset default, overrides, column, "
              "lineage, detector, trains a model, the preset's notes (benchmark.facts)"),
    "hardware": "device, threads, precision the training steps ran in",
    "finished_at": "UTC time the record was written",
    "fast_dev_run": "only in development-run records: its settings and each phase's planned work",
}
REQUIRED = {"ok": ("id", "status", "config", "metrics", "timings"),
            "failed": ("id", "status", "config", "error")}


def problem(record: object) -> str | None:
    """Why ``record`` is not a usable record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema", 1) != SCHEMA:
        return f"schema {record.get('schema')!r}, this version reads {SCHEMA}"
    status = record.get("status")
    if status not in REQUIRED:
        return f"status {status!r}"
    missing = [k for k in REQUIRED[status] if k not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    if status == "ok" and not all(k in record["metrics"] for k in ("ca", "asr")):
        return "metrics without ca/asr"
    return None


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a usable record file, else (None, why it is not)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None, "not valid JSON"
    why = problem(record)
    return (None, why) if why else (record, None)


class ResultStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self._reported: set[Path] = set()

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        path = self.path(record["id"])
        record = {"schema": SCHEMA, **record}
        atomic_write_bytes(path, json.dumps(_clean(record), indent=1, default=str).encode())
        return path

    def read(self, cell_id: str) -> dict[str, Any] | None:
        """The cell's record, or None (absent, or unusable: reported once, then not done)."""
        path = self.path(cell_id)
        if not path.exists():
            return None
        record, why = read_record(path)
        if why:
            if path not in self._reported:
                self._reported.add(path)
                print(f"warning: record {path} is unusable ({why}); the cell counts as not done",
                      file=sys.stderr)
            return None
        return record

    def claim(self, cell_id: str) -> contextlib.AbstractContextManager[bool]:
        """Hold the cell's lock while running it: yields False (without waiting) when another
        process holds it."""
        return file_lock(self.root / "locks" / f"{cell_id}.lock", wait=False)

    def status(self, cell_id: str) -> str:
        """"ok", "failed" or "todo"."""
        rec = self.read(cell_id)
        return rec["status"] if rec else "todo"

    def records(self) -> list[dict[str, Any]]:
        if not self.records_dir.exists():
            return []
        return [r for r in (self.read(p.stem) for p in sorted(self.records_dir.glob("*.json")))
                if r is not None]
