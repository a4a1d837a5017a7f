import pytest

from benchmark.config import cell_id, parse_sets, resolve_cell, validate_sets
from benchmark.registry import UsageError


def test_presets_resolve_to_complete_configs():
    c = resolve_cell("quick", "badnets", "pipd", 0, [])
    assert c["attack"] == "badnets" and c["defense"] == "pipd" and c["dataset"] == "cifar10"
    assert c["model"] == "resnet18" and c["model_params"] == {"width": 16}
    assert c["attack_params"]["rate"] == 0.05 and c["attack_params"]["target"] == 0
    assert c["defense_params"]["beta"] == 3.0 and c["defense_params"]["rho"] == 0.04
    full = resolve_cell("full", "badnets", "pipd", 0, [])
    assert full["model_params"] == {"width": 64} and full["data"]["train_size"] is None
    assert full["defense_params"]["pre_epochs"] == 200 and full["defense_params"]["rounds"] == 8


def test_set_overrides_by_namespace_and_changes_the_hash():
    base = resolve_cell("smoke", "badnets", "pipd", 0, [])
    sets = parse_sets(["train.epochs=7", "pipd.rounds=3", "attack.rate=0.1", "model.width=4",
                       "data.train_size=123", "train.milestones=[2, 4]"])
    c = resolve_cell("smoke", "badnets", "pipd", 0, sets)
    assert c["train"]["epochs"] == 7 and c["defense_params"]["rounds"] == 3
    assert c["attack_params"]["rate"] == 0.1 and c["model_params"]["width"] == 4
    assert c["data"]["train_size"] == 123 and c["train"]["milestones"] == [2, 4]
    assert cell_id(c) != cell_id(base)
    assert cell_id(resolve_cell("smoke", "badnets", "pipd", 0, [])) == cell_id(base)
    assert cell_id(resolve_cell("smoke", "badnets", "pipd", 1, [])) != cell_id(base)


def test_an_attacks_training_override_applies_to_every_defense_of_that_attack(monkeypatch):
    from benchmark import config
    from benchmark.grid import describe

    smoke = {**config.PRESETS["smoke"], "attack_train": {"wanet": {"epochs": 9}}}
    monkeypatch.setitem(config.PRESETS, "smoke", smoke)
    for defense in ("no_defense", "pipd"):
        c = resolve_cell("smoke", "wanet", defense, 0, [])
        assert c["train"]["epochs"] == 9
        assert "train.epochs=9" in describe(c)  # shown by --dry-run (tables note it once)
    other = resolve_cell("smoke", "badnets", "pipd", 0, [])
    assert other["train"]["epochs"] == 3 and "train.epochs" not in describe(other)
    # --set still wins over the attack's override
    assert resolve_cell("smoke", "wanet", "pipd", 0, parse_sets(["train.epochs=4"]))["train"]["epochs"] == 4


def test_a_method_version_bump_rekeys_only_that_methods_cells(monkeypatch):
    from attacks import ATTACKS

    badnets = ATTACKS.get("badnets")
    before = {a: cell_id(resolve_cell("smoke", a, "no_defense", 0, [])) for a in ("badnets", "sig")}
    assert "attack_version" not in resolve_cell("smoke", "badnets", "no_defense", 0, [])
    monkeypatch.setattr(badnets, "version", 2)
    c = resolve_cell("smoke", "badnets", "no_defense", 0, [])
    assert c["attack_version"] == 2 and cell_id(c) != before["badnets"]
    assert cell_id(resolve_cell("smoke", "sig", "no_defense", 0, [])) == before["sig"]


def test_options_added_later_keep_finished_records_ids_at_their_default():
    # a committed quick record (docs/results/quick), made before train.precision/compile existed
    c = resolve_cell("quick", "badnets", "pipd", 0, parse_sets(["badnets.pattern=checkerboard"]))
    assert c["train"]["precision"] == "auto" and c["train"]["compile"] is False
    assert cell_id(c) == "b63fb41f3659fdca"
    ids = {cell_id(resolve_cell("quick", "badnets", "pipd", 0, parse_sets(
        ["badnets.pattern=checkerboard", f"train.{k}={v}"]))) for k, v in
        (("precision", "fp32"), ("precision", "bf16"), ("compile", "true"))}
    assert len(ids) == 3 and cell_id(c) not in ids  # any other value is its own cell


@pytest.mark.parametrize("item,message", [
    ("train.epochz=3", "unknown --set key 'train.epochz'; valid train keys: .*epochs"),
    ("pipd.rhoo=1", "unknown --set key 'pipd.rhoo'; valid pipd keys: .*rho"),
    ("bogus.x=1", "unknown --set namespace 'bogus'; valid: data, model, train"),
    ("epochs=3", "unknown --set key 'epochs'"),
    ("train.epochs=many", "train.epochs: expected int"),
    ("attack.rate=1.5", r"poison rate must be in \(0, 1\)"),
    ("train.optimizer=rmsprop", "valid choices: sgd, adam"),
    ("train.precision=fp16", "unknown precision 'fp16'; valid choices: auto, fp32, bf16"),
])
def test_bad_overrides_name_the_valid_choices(item, message):
    sets = parse_sets([item])
    with pytest.raises(UsageError, match=message):
        validate_sets(sets, ["badnets"], ["pipd"])
        resolve_cell("smoke", "badnets", "pipd", 0, sets)


def test_unknown_names_are_usage_errors():
    with pytest.raises(UsageError, match="unknown attack 'badnet'; valid choices: .*badnets"):
        resolve_cell("smoke", "badnet", "pipd", 0, [])
    with pytest.raises(UsageError, match="unknown defense"):
        resolve_cell("smoke", "badnets", "pipe", 0, [])
    with pytest.raises(UsageError, match="unknown grid .tiny.; valid choices: smoke, demo, quick, full"):
        resolve_cell("tiny", "badnets", "pipd", 0, [])
    with pytest.raises(UsageError, match="unknown model"):
        resolve_cell("smoke", "badnets", "pipd", 0, parse_sets(["model=vgg"]))
    with pytest.raises(UsageError, match="key=value"):
        parse_sets(["train.epochs"])


def test_repoisoning_is_for_plain_training_only_and_keeps_the_fixed_cells_ids():
    base = resolve_cell("smoke", "wanet", "no_defense", 0, [])
    on = resolve_cell("smoke", "wanet", "no_defense", 0, parse_sets(["attack.repoison_every_epoch=true"]))
    off = resolve_cell("smoke", "wanet", "no_defense", 0, parse_sets(["attack.repoison_every_epoch=false"]))
    assert cell_id(off) == cell_id(base) != cell_id(on)
    with pytest.raises(UsageError, match="training-time control.*pipd cannot run it; valid: no_defense"):
        resolve_cell("smoke", "wanet", "pipd", 0, parse_sets(["wanet.repoison_every_epoch=true"]))



def test_open_and_closed_ranges_refuse_their_ends_as_declared():
    from benchmark.validate import at_least, between, check_value, within

    check_value("x", 0, float, within(0, 1))
    check_value("x", 1, float, within(0, 1))
    check_value("x", 0.5, float, between(0, 1))
    for value in (0, 1, 1.5, -0.1):
        with pytest.raises(UsageError, match="x: must be strictly between 0 and 1"):
            check_value("x", value, float, between(0, 1))
    with pytest.raises(UsageError, match="must not be negative"):
        check_value("x", -1, float, at_least(-2))
    check_value("x", -1, float, at_least(-2, signed=True))


def test_a_development_runs_work_in_training_image_units():
    from benchmark.cost import EVAL, PASSES, units

    work = [{"phase": "train", "epochs": 2, "images_per_epoch": 100},
            {"phase": "DBD SimCLR", "epochs": 1, "images_per_epoch": 10},
            {"phase": "eval", "images": 30}]
    assert units(work) == pytest.approx(200 + PASSES["DBD SimCLR"] * 10 + EVAL * 30)


def test_the_grid_has_dataset_and_model_axes():
    from benchmark.grid import expand_grid

    default = expand_grid("smoke", ["badnets"], ["no_defense"], [0], [])
    both = expand_grid("smoke", ["badnets"], ["no_defense", "pipd"], [0], [],
                       models=["resnet18", "preact_resnet18"])
    assert [(c["model"], c["defense"]) for c in both] == [
        ("resnet18", "no_defense"), ("resnet18", "pipd"),
        ("preact_resnet18", "no_defense"), ("preact_resnet18", "pipd")]
    assert both[0] == default[0]  # naming the default model is the default cell
    full = expand_grid("full", ["badnets", "wanet"], ["no_defense"], [0], [],
                       datasets=["cifar10", "imagefolder"])
    assert [(c["dataset"], c["model"], c["attack"]) for c in full] == [
        ("cifar10", "resnet18", "badnets"), ("cifar10", "resnet18", "wanet"),
        ("imagefolder", "resnet18_imagenet", "badnets")]  # the ImageNet row's attacks only
    for bad, message in ((dict(models=["nope"]), "unknown model 'nope'; valid choices"),
                         (dict(datasets=["cifar9"]), "unknown dataset 'cifar9'; valid choices")):
        with pytest.raises(UsageError, match=message):
            expand_grid("smoke", ["badnets"], ["no_defense"], [0], [], **bad)


# training images and target-class images of each dataset's real training split
REAL_SPLITS = {"cifar10": (50_000, 5_000), "cifar100": (50_000, 500), "gtsrb": (39_209, 2_250),
               "tiny_imagenet": (100_000, 500)}


@pytest.mark.parametrize("dataset", list(REAL_SPLITS))
def test_each_dataset_takes_its_declared_attack_settings(dataset):
    """A clean-label attack poisons half of the target class on every dataset (5% of CIFAR-10);
    GTSRB's target is backdoor-toolbox's class 2; --set still wins."""
    from benchmark.presets import DATASET_ATTACKS

    n, in_target = REAL_SPLITS[dataset]
    target = 2 if dataset == "gtsrb" else 0
    for attack in ("badnets", "sig", "cl", "wanet"):
        c = resolve_cell("full", attack, "no_defense", 0, [], dataset=dataset)
        assert c["attack_params"]["target"] == target
        if attack in ("sig", "cl"):
            assert c["attack_params"]["rate"] * n == pytest.approx(in_target / 2, rel=0.01)
        else:
            assert c["attack_params"]["rate"] == 0.05
    c = resolve_cell("full", "sig", "no_defense", 0, [("sig.rate", 0.001), ("attack.target", 1)],
                     dataset=dataset)
    assert (c["attack_params"]["rate"], c["attack_params"]["target"]) == (0.001, 1)
    assert set(DATASET_ATTACKS) <= set(REAL_SPLITS)
