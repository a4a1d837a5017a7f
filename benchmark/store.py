"""The results store: one JSON record per cell, ``<results>/records/<cell id>.json``.

Records are written atomically (temp file + rename), so an interrupted grid never leaves a
partial record; a re-run skips every cell whose record says ``ok`` and retries failed ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmark.cache import atomic_write_bytes


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON readers reject them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


class ResultStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        path = self.path(record["id"])
        atomic_write_bytes(path, json.dumps(_clean(record), indent=1, default=str).encode())
        return path

    def read(self, cell_id: str) -> dict[str, Any] | None:
        path = self.path(cell_id)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def status(self, cell_id: str) -> str:
        """"ok", "failed" or "todo"."""
        rec = self.read(cell_id)
        return rec["status"] if rec else "todo"

    def records(self) -> list[dict[str, Any]]:
        if not self.records_dir.exists():
            return []
        out = []
        for p in sorted(self.records_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                continue
        return out
