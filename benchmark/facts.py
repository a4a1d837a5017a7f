"""What a record says about itself, fixed when it is written.

A report must show a committed record the way it was meant when it ran, whatever today's
presets say: whether the cell was its preset's own cell for its (attack, defense, seed), what it
overrode against that preset, the defense's table name and lineage, whether it is a detector and
whether it trained the model its CA / ASR come from, and the preset's notes that concern it. The
cell computes these ``facts`` from its config and the code it ran with and stores them in the
record; reports read them (``benchmark.reports.records``). Records made before facts were stored
get them from ``python -m benchmark.facts FOLDER...`` (computed by the code of that day, written
once) and are read with today's code until then.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

FACT_KEYS = ("default", "attack_overrides", "defense_overrides", "column", "lineage", "detector",
             "trains_model", "preset_attack_train", "caveat")


def trains_model(defense: str, params: dict[str, Any]) -> bool:
    """``Defense.trains_final_model`` of the settings (fields a later version dropped are
    ignored); an unknown defense counts as training one."""
    from defenses import DEFENSES

    if defense not in DEFENSES:
        return True
    cls = DEFENSES.get(defense)
    known = {f.name for f in fields(cls.Params)}
    try:
        return cls.trains_final_model(cls.Params(**{k: v for k, v in params.items() if k in known}))
    except (TypeError, ValueError):
        return not cls.is_detector


def record_facts(config: dict[str, Any], cell_id: str | None) -> dict[str, Any]:
    """The facts of a record of ``config`` (whose id is ``cell_id``), by the code and presets
    of now. A defense not registered here (a plugin not loaded) is labelled by every recorded
    setting, so that records of different settings never pool."""
    from benchmark.config import PRESETS, lineage, overrides, preset_cell
    from benchmark.config import cell_id as id_of
    from defenses import DEFENSES

    base = preset_cell(config)
    upstream, own = overrides(config, attack_train=False, base=base)
    registered = config["defense"] in DEFENSES
    cls = DEFENSES.get(config["defense"]) if registered else None
    if base is None and not registered:
        own = dict(config.get("defense_params") or {})
    preset = PRESETS.get(config.get("preset"), {})
    return {
        "default": base is not None and "fast_dev_run" not in config and id_of(base) == cell_id,
        "attack_overrides": upstream, "defense_overrides": own,
        "column": (cls.column or cls.name) if cls else config["defense"],
        "lineage": lineage(cls) if cls else [config["defense"]],
        "detector": bool(cls and cls.is_detector),
        "trains_model": trains_model(config["defense"], config.get("defense_params") or {}),
        "preset_attack_train": preset.get("attack_train", {}).get(config["attack"], {}),
        "caveat": preset.get("caveats", {}).get(config["defense"]),
    }


def migrate(folders: list[Path]) -> int:
    """Write facts into every record under ``folders`` that lacks them; returns how many."""
    import json

    from benchmark.store import read_record

    changed = 0
    for folder in folders:
        root = folder / "records" if (folder / "records").is_dir() else folder
        for path in sorted(root.glob("*.json")):
            rec, why = read_record(path)
            if why is not None or "facts" in rec:
                continue
            rec["facts"] = record_facts(rec["config"], rec.get("id"))
            path.write_text(json.dumps(rec, indent=1, default=str))
            changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    folders = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not folders:
        print("usage: python -m benchmark.facts FOLDER...", file=sys.stderr)
        return 2
    print(f"wrote facts into {migrate(folders)} record(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
