"""Artifact keys come from one declared table (benchmark/keys.py); every key it gives equals the
key the suite built before the table, field list by field list, so no cached artifact or record
moves (the lists below are that earlier code, kept as the known answer)."""

import json
from pathlib import Path

import pytest

from benchmark.config import identity
from benchmark.keys import ARTIFACTS, artifact_key


def legacy_attack_key(config: dict, uses_model: bool) -> dict:
    fields = ["dataset", "data", "attack", "attack_params", "attack_version", "seed", "fast_dev_run"]
    if uses_model:
        fields += ["model", "model_params"]
    ident = identity(config)
    key = {k: ident[k] for k in fields if k in ident}
    precision = config["train"].get("precision", "auto")
    if uses_model and precision != "auto":
        key["precision"] = precision
    key["attack_params"] = {k: v for k, v in key["attack_params"].items() if k != "repoison_every_epoch"}
    return key


def legacy_defense_key(config: dict) -> dict:
    ident = identity(config)
    return {k: ident[k] for k in ("dataset", "data", "attack", "attack_params", "attack_version",
                                  "model", "model_params", "train", "seed", "defense_version",
                                  "fast_dev_run") if k in ident}


def cells() -> list[dict]:
    from benchmark.devrun import mark
    from benchmark.grid import expand_grid

    out = []
    for preset in ("smoke", "demo", "quick", "full"):
        grid = expand_grid(preset, ["all"], ["all"], [0, 1], [])
        out += grid + [mark(c) for c in grid[::7]]
    out += expand_grid("quick", ["badnets", "dynamic"], ["no_defense"], [0],
                       [("attack.repoison_every_epoch", True), ("train.precision", "fp32")])
    out += expand_grid("quick", ["trojan", "dynamic"], ["pipd", "dbd"], [0], [("train.precision", "bf16")])
    return out


@pytest.fixture(scope="module")
def all_cells() -> list[dict]:
    return cells()


def key(config, kind):
    """A resolved config's artifact key of ``kind``, as the cell computes it."""
    from benchmark.config import identity

    return artifact_key(identity(config), kind)


def test_every_kind_of_key_equals_the_earlier_construction(all_cells):
    from attacks import ATTACKS
    from benchmark.config import identity

    assert len(all_cells) > 500
    for c in all_cells:
        ident = identity(c)
        cls = ATTACKS.get(c["attack"])
        uses_model = cls.uses_model(cls.Params(**c["attack_params"]))
        attack = legacy_attack_key(c, uses_model)
        assert artifact_key(ident, "attack_model" if uses_model else "attack") == attack
        reference = {k: v for k, v in legacy_attack_key(c, True).items()
                     if k not in ("attack", "attack_params", "attack_version")}
        assert artifact_key(ident, "clean_reference") == reference
        defense = legacy_defense_key(c)
        assert artifact_key(ident, "defense") == defense
        assert artifact_key(ident, "shared") == {k: v for k, v in defense.items() if k != "defense_version"}
        assert artifact_key(ident, "images") == {k: v for k, v in defense.items()
                                             if k not in ("train", "defense_version")}


def test_keys_separate_what_they_depend_on_and_share_what_they_do_not(all_cells):
    from benchmark.cache import config_hash

    quick = [c for c in all_cells if c["preset"] == "quick" and "fast_dev_run" not in c]
    pick: dict = {}
    for c in quick:  # the preset's own cells (listed first), not the overridden ones
        pick.setdefault((c["attack"], c["defense"], c["seed"]), c)
    a, b, abl = pick["badnets", "pipd", 0], pick["badnets", "pipd_median", 0], pick["badnets", "abl", 0]
    assert key(a, "shared") == key(abl, "shared")  # one No Defense / LGA model
    assert key(a, "defense") == key(b, "defense")  # a variant shares PIPD's LGA model
    assert key(a, "defense") != key(abl, "defense")  # ABL v2: its own version
    assert key(a, "attack") != key(pick["badnets", "pipd", 1], "attack")  # seed
    trojan, cl = pick["trojan", "pipd", 0], pick["cl", "pipd", 0]
    assert key(trojan, "clean_reference") == key(cl, "clean_reference")
    assert key(trojan, "attack_model") != key(cl, "attack_model")
    # one backdoored model per (attack setting, recipe, seed), whatever the defense
    assert len({config_hash(key(c, "shared")) for c in quick}) == len(
        {json.dumps([c["attack"], c["attack_params"], c["train"], c["seed"]], sort_keys=True)
         for c in quick})
    assert set(ARTIFACTS) == {"attack", "attack_model", "clean_reference", "defense", "shared",
                              "images"}


def test_the_committed_records_keep_their_ids():
    from benchmark.config import cell_id

    root = Path(__file__).parents[1] / "docs" / "results"
    recs = [json.loads(p.read_text()) for p in root.glob("quick*/*.json")]
    assert len(recs) > 150
    assert all(cell_id(r["config"]) == r["id"] for r in recs)


def test_abl_and_pipd_train_one_lga_model_at_quick(tmp_path):
    """The quick preset gives ABL's isolation PIPD's LGA settings so that one model serves both;
    the LGA key holds the shared fields and the recipe, not ABL's version 2 (which kept them
    apart: ABL trained its own, 141 s of its BadNets cell)."""
    from benchmark.cache import ArtifactCache
    from benchmark.grid import expand_grid
    from benchmark.train import TrainConfig
    from defenses import DEFENSES, DefenseContext

    asked = {}
    for c in expand_grid("quick", ["badnets"], ["abl", "pipd"], [0], []):
        ctx = DefenseContext(train=None, make_model=None, trainer=None,
                             train_cfg=TrainConfig.from_dict(c["train"]), seed=0,
                             cache=ArtifactCache(tmp_path), cache_key=key(c, "defense"),
                             keys={kind: key(c, kind) for kind in ("shared", "images")})

        def trained_once(kind, key, *args, defense=c["defense"], **kw):  # noqa: ANN001, ANN202
            asked[defense] = (kind, key)
            raise StopIteration

        ctx.trained_once = trained_once
        cls = DEFENSES.get(c["defense"])
        defense = cls(cls.Params(**c["defense_params"]))
        try:  # ABL's run starts with its isolation model; PIPD's LGA model is its first phase
            defense.run(ctx) if c["defense"] == "abl" else defense.pre_isolation_model(ctx)
        except StopIteration:
            pass
    assert DEFENSES.get("abl").version > 1 and asked["abl"] == asked["pipd"]
