"""A cell's id names its record and keys its artifacts: code that changes an id without bumping
a method's ``version`` orphans every committed record of that cell without a word (and a
changed method that keeps its id reuses stale results). ``tests/data/cell_ids.json`` holds the id
of every registered cell of every preset (seed 0, and its development run) with its methods'
versions; ``python -m tests.test_identity`` rewrites it after an intended change."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmark import devrun
from benchmark.config import PRESETS
from benchmark.spec import CellSpec

IDS = Path(__file__).parent / "data" / "cell_ids.json"


def current() -> dict[str, dict[str, object]]:
    from attacks import ATTACKS
    from defenses import DEFENSES

    out = {}
    for preset in PRESETS:
        for attack in ATTACKS.names():
            if not ATTACKS.get(attack).__module__.startswith("attacks."):
                continue  # a plugin another test registered
            for defense in DEFENSES.names():
                if not DEFENSES.get(defense).__module__.startswith("defenses."):
                    continue
                spec = CellSpec.resolve(preset, attack, defense, 0)
                out[f"{preset}/{attack}/{defense}"] = {
                    "id": spec.id, "dev": spec.replace(fast_dev_run=devrun.DevRun()).id,
                    "versions": [spec.attack_version, spec.defense_version]}
    return out


def test_ids_change_only_with_a_version():
    committed = json.loads(IDS.read_text())
    now = current()
    moved = [key for key, old in committed.items() if key in now
             and old["versions"] == now[key]["versions"]
             and (old["id"], old["dev"]) != (now[key]["id"], now[key]["dev"])]
    assert not moved, (f"{len(moved)} cell id(s) changed at the same method versions, e.g. {moved[:3]}: "
                       "bump the changed method's version, or keep its key (python -m tests.test_identity "
                       "rewrites the file after an intended change)")
    assert set(now) <= set(committed), "new cells: python -m tests.test_identity"


if __name__ == "__main__":
    IDS.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {IDS} ({len(json.loads(IDS.read_text()))} cells)", file=sys.stderr)
