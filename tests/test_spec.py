"""The typed cell spec: its plain form is the resolved config the ids were made from, every
field is typed, and ids and artifact keys come from the spec alone."""

from __future__ import annotations

import dataclasses

import pytest

from attacks import ATTACKS
from benchmark import devrun
from benchmark.cache import canonical_json
from benchmark.config import PRESETS, cell_id, parse_sets, resolve_cell
from benchmark.keys import ARTIFACTS, artifact_key
from benchmark.spec import CellSpec, EvalConfig
from benchmark.train import TrainConfig
from defenses import DEFENSES


def test_every_registered_cell_of_every_preset_round_trips_with_its_id():
    """The spec of each resolved config gives back that config and its id, development runs
    included: records, cache keys and the committed ids stay what they were."""
    n = 0
    for preset in PRESETS:
        for attack in ATTACKS:
            for defense in DEFENSES:
                config = resolve_cell(preset, attack, defense, 0, [])
                for c in (config, devrun.mark(config)):
                    spec = CellSpec.from_config(c)
                    assert canonical_json(spec.to_config()) == canonical_json(c), (preset, attack, defense)
                    assert spec.id == cell_id(c)
                    n += 1
    assert n == 2 * len(PRESETS) * len(ATTACKS) * len(DEFENSES)


def test_fields_are_typed_and_frozen():
    spec = CellSpec.resolve("quick", "badnets", "pipd", 2, parse_sets(["pipd.rounds=3", "train.lr=0.2"]))
    assert isinstance(spec.train, TrainConfig) and spec.train.lr == 0.2
    assert isinstance(spec.eval, EvalConfig) and spec.eval.curve_size == 1000
    assert isinstance(spec.attack_params, ATTACKS.get("badnets").Params)
    assert isinstance(spec.defense_params, DEFENSES.get("pipd").Params)
    assert spec.defense_params.rounds == 3 and spec.seed == 2 and spec.fast_dev_run is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.data["train_size"] = 5  # type: ignore[index]
    assert spec.defense_cls is DEFENSES.get("pipd") and spec.attack_cls is ATTACKS.get("badnets")


def test_json_replace_and_keys():
    spec = CellSpec.resolve("smoke", "blended", "abl", 0)
    again = CellSpec.from_json(spec.to_json())
    assert again == spec and again.id == spec.id and hash(again) == hash(spec)
    other = spec.replace(seed=1)
    assert other.seed == 1 and other.id != spec.id
    assert other.id == cell_id(resolve_cell("smoke", "blended", "abl", 1, []))
    dev = spec.replace(fast_dev_run=devrun.DevRun())
    assert dev.id == cell_id(devrun.mark(spec.to_config())) and dev.replace(fast_dev_run=None) == spec
    with pytest.raises(TypeError, match="no field"):
        spec.replace(colour="red")
    from benchmark.config import identity

    for kind in ARTIFACTS:  # the spec's keys are the declared table's, over the config's identity
        assert spec.artifact_key(kind) == artifact_key(identity(spec.to_config()), kind)
    assert spec.artifact_key("shared") == other.replace(seed=0).artifact_key("shared")
    assert spec.artifact_key("shared") != other.artifact_key("shared")


def test_a_version_past_one_is_in_the_plain_form_and_the_id():
    spec = CellSpec.resolve("quick", "badnets", "dbr", 0)
    assert spec.defense_version == DEFENSES.get("dbr").version > 1
    assert spec.to_config()["defense_version"] == spec.defense_version
    assert "attack_version" not in spec.to_config()  # BadNets is at version 1
    assert spec.replace(defense_version=1).id != spec.id
