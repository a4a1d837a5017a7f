import pytest

from benchmark.registry import Registry, UsageError


def test_unknown_name_lists_valid_choices():
    reg = Registry("widget")
    reg.register("alpha", 1)
    reg.register("beta", 2)
    with pytest.raises(UsageError, match="unknown widget 'gamma'; valid choices: alpha, beta"):
        reg.get("gamma")


def test_register_rejects_duplicates_and_bad_names():
    reg = Registry("widget")
    reg.register("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 2)
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("Alpha", 3)
    assert reg.get("alpha") == 1 and reg.names() == ["alpha"]


def test_builtin_registries_hold_the_foundation_components():
    from attacks import ATTACKS
    from benchmark.data import DATASETS
    from benchmark.models import MODELS
    from defenses import DEFENSES

    assert {"badnets"} <= set(ATTACKS.names())
    assert {"no_defense", "pipd"} <= set(DEFENSES.names())
    assert {"cifar10", "imagefolder"} <= set(DATASETS.names())
    assert {"resnet18", "preact_resnet18", "resnet18_imagenet"} <= set(MODELS.names())


PLUGIN = '''
from defenses import Defense, DefenseResult, register_defense

@register_defense
class MyDefense(Defense):
    name = "{name}"

    def run(self, ctx):
        return DefenseResult(model=ctx.make_model())
'''


def test_plugin_registers_a_defense_from_outside(tmp_path):
    from benchmark.plugins import load_plugin
    from defenses import DEFENSES

    f = tmp_path / "my_defense.py"
    f.write_text(PLUGIN.format(name="plugin_test_defense"))
    assert load_plugin(f) == ["defense:plugin_test_defense"]
    assert "plugin_test_defense" in DEFENSES
    assert load_plugin(f) == []  # loading twice is a no-op, not a duplicate registration


def test_plugin_that_registers_nothing_or_fails_is_a_usage_error(tmp_path):
    from benchmark.plugins import load_plugin

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(UsageError, match="registered nothing"):
        load_plugin(empty)
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_xyz\n")
    with pytest.raises(UsageError, match="failed to import: ModuleNotFoundError"):
        load_plugin(broken)
    with pytest.raises(UsageError, match="does not exist"):
        load_plugin(tmp_path / "missing.py")


def test_select_resolves_all_and_rejects_unknown_names():
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2)
    reg.register("a", 1)
    assert reg.select(None) == reg.select(["all"]) == ["a", "b"]
    assert reg.select(["b"]) == ["b"]
    with pytest.raises(UsageError, match="unknown widget 'c'; valid choices: a, b"):
        reg.select(["a", "c"])


def test_select_all_anywhere_and_empty_options_are_refused():
    from attacks import ATTACKS
    from benchmark.cli import main
    from benchmark.cliutil import split_csv

    assert ATTACKS.select(["all", "badnets"]) == ATTACKS.names()
    assert ATTACKS.select(["sig", "badnets", "sig"]) == ["sig", "badnets"]
    with pytest.raises(UsageError, match="--attacks is empty"):
        split_csv("", "--attacks")
    assert main(["--attacks", "", "--dry-run"]) == 2
