"""A cell's id names its record and keys its artifacts: code that changes an id without bumping
a method's ``version`` orphans every committed record of that cell without a word (and a
changed method that keeps its id reuses stale results). ``tests/data/cell_ids.json`` holds the id
of every registered cell of every preset (seed 0, and its development run) with its methods'
versions, ``tests/data/method_defaults.json`` every method's defaults at its version (a field
added since is hashed only off its default, so a changed default need not move an id: the
version must); ``python -m tests.test_identity`` rewrites both after an intended change. A
method registered since is in neither and needs nothing."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmark import devrun
from benchmark.config import PRESETS
from benchmark.spec import CellSpec

IDS = Path(__file__).parent / "data" / "cell_ids.json"
DEFAULTS = Path(__file__).parent / "data" / "method_defaults.json"


def builtin(kind: str) -> list[str]:
    """The suite's own attacks or defenses (not a plugin another test registered)."""
    from benchmark.catalog import catalog

    return list(catalog(builtin=True)[kind])


def defaults() -> dict[str, dict[str, object]]:
    """{"attacks/badnets": {"version": 1, "defaults": {...}}, ...} of the registered methods."""
    from attacks import ATTACKS
    from benchmark.cache import canonical_json
    from defenses import DEFENSES

    return {f"{kind}/{name}": {"version": reg.get(name).version,
                               "defaults": json.loads(canonical_json(asdict(reg.get(name).Params())))}
            for kind, reg in (("attacks", ATTACKS), ("defenses", DEFENSES)) for name in builtin(kind)}


def current() -> dict[str, dict[str, object]]:
    out = {}
    for preset in PRESETS:
        for attack in builtin("attacks"):
            for defense in builtin("defenses"):
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


def test_defaults_change_only_with_a_version():
    committed = json.loads(DEFAULTS.read_text())
    # an option added since (a key not in the file) keeps the old behaviour at its default
    changed = [key for key, now in defaults().items() if key in committed
               and committed[key]["version"] == now["version"]
               and committed[key]["defaults"] != {k: now["defaults"].get(k, "<removed>")
                                                  for k in committed[key]["defaults"]}]
    assert not changed, (f"the defaults of {changed} changed at the same version: a cell at "
                         "defaults would reuse the old results; bump its version (then python -m "
                         "tests.test_identity)")


def test_a_field_added_at_its_default_keeps_the_id_and_enters_it_off_default():
    from benchmark.cache import hashed_fields

    @dataclass
    class Before:
        rate: float = 0.1

    @dataclass
    class After(Before):
        sizes: tuple[int, ...] = (3, 5)  # an option added since, its default the old behaviour

    for keyed in (frozenset({"rate"}), frozenset()):  # a method of the keyed table, one since
        old = hashed_fields(Before, {"rate": 0.1}, keyed)
        assert hashed_fields(After, {"rate": 0.1, "sizes": (3, 5)}, keyed) == old
        assert hashed_fields(After, {"rate": 0.1, "sizes": [3, 5]}, keyed) == old  # read back from JSON
        assert hashed_fields(After, {"rate": 0.1, "sizes": [3]}, keyed) == {**old, "sizes": [3]}
    assert hashed_fields(Before, {"rate": 0.1}, frozenset({"rate"})) == {"rate": 0.1}  # always hashed
    assert hashed_fields(Before, {"rate": 0.1}, frozenset()) == {}
    assert hashed_fields(Before, {"rate": 0.2}, frozenset()) == {"rate": 0.2}


if __name__ == "__main__":
    IDS.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    DEFAULTS.write_text(json.dumps(defaults(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {IDS} ({len(json.loads(IDS.read_text()))} cells) and {DEFAULTS}", file=sys.stderr)
