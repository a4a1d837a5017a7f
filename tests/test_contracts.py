"""Contract tests over every registered attack and defense (timm's pattern): a new method is
tested by being registered. Each gets the same checks of its declaration; what it computes is
tested in its own module's tests, and every built-in method runs end to end in the full grid's
development run (tests/test_devrun.py)."""

import dataclasses
import functools
import importlib
import sys

import pytest

from attacks import ATTACKS, Attack, AttackParams
from benchmark.sources import source_digest
from benchmark.validate import check_fields
from defenses import DEFENSES, Defense, DefenseParams
from defenses.base import GroundTruthAnalysis


def builtin(registry, package: str) -> list[str]:
    """The suite's own entries (plugins other tests registered in this process left out)."""
    return [n for n in registry.names() if registry.get(n).__module__.startswith(package + ".")]


def declared(cls: type, params_base: type, base: type, name: str, implements: str) -> None:
    assert cls.name == name and name == name.lower(), "the registry key is the class's name"
    assert issubclass(cls, base) and getattr(cls, implements) is not getattr(base, implements)
    assert isinstance(cls.version, int) and cls.version >= 1
    params = cls.Params
    assert dataclasses.is_dataclass(params) and issubclass(params, params_base)
    defaults = params()  # every option has a default (the published method's)
    check_fields(params, dataclasses.asdict(defaults), name)  # defaults within declared ranges
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert doc.strip(), "the module docstring states the method"
    assert source_digest(cls, base)


@pytest.mark.parametrize("name", builtin(DEFENSES, "defenses"))
def test_every_defense_declares_its_method(name):
    cls = DEFENSES.get(name)
    declared(cls, DefenseParams, Defense, name, "run")
    assert cls.title, "--list and the records print it"
    p = cls.Params()
    assert 0 <= cls.validation_fraction(p) < 1 and cls.trusted_per_class(p) >= 0
    if cls.is_detector:  # CA / ASR of a model it inspected: never in a CA / ASR ranking
        assert cls.trains_final_model(p) is False
    # no defense proper sees the poison mask: only declared ground-truth analyses do
    assert cls.needs_ground_truth(p) == issubclass(cls, GroundTruthAnalysis)


@pytest.mark.parametrize("name", [n for n in builtin(DEFENSES, "defenses")
                                  if DEFENSES.get(n).trusted_per_class(DEFENSES.get(n).Params()) > 0])
def test_a_defense_that_takes_trusted_samples_refuses_a_context_without_them_before_training(name):
    from defenses.base import DefenseContext

    def no_model():
        raise AssertionError("trained before checking its trusted samples")
    ctx = DefenseContext(train=None, make_model=no_model, trainer=None, train_cfg=None, seed=0,
                         cache=None, cache_key={})
    cls = DEFENSES.get(name)
    with pytest.raises(ValueError, match=f"^{name} needs trusted clean images"):
        cls(cls.Params()).run(ctx)


@pytest.mark.parametrize("name", builtin(ATTACKS, "attacks"))
def test_every_attack_declares_its_method(name):
    cls = ATTACKS.get(name)
    declared(cls, AttackParams, Attack, name, "apply_trigger")
    assert cls.rate_of and isinstance(cls.clean_label, bool)


def test_every_method_class_of_the_packages_is_registered():
    """A method class that registers nothing (a forgotten decorator) is caught here."""
    import inspect
    import pkgutil

    for package, registry, base in (("attacks", ATTACKS, Attack), ("defenses", DEFENSES, Defense)):
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            module = importlib.import_module(f"{package}.{info.name}")
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, base) and obj.__module__ == module.__name__ and obj.name:
                    assert obj.name in registry and registry.get(obj.name) is obj, obj


CIFAR_MODELS = ("resnet18", "preact_resnet18", "vgg19_bn", "mobilenet_v3_large", "vit_b_16")


@functools.cache
def small_model(model_name: str):  # noqa: ANN201
    from benchmark.models import build_model

    return build_model(model_name, 10, width=4, pretrained=False)  # no weights to download


@pytest.mark.parametrize("model_name", CIFAR_MODELS)
@pytest.mark.parametrize("name", builtin(DEFENSES, "defenses"))
def test_every_defense_accepts_a_model_or_says_in_one_line_what_it_needs(name, model_name):
    cls = DEFENSES.get(name)
    model = small_model(model_name)
    try:
        cls.check_model(cls.Params(), model)
    except ValueError as exc:
        assert "\n" not in str(exc) and len(str(exc)) > 20
        assert model_name != "resnet18", f"{name} refuses the default model: {exc}"


def test_the_residual_only_defenses_refuse_vgg_and_the_rest_accept_it():
    """NONE and DBALFA read a residual network's layout, PSBD drops out residual blocks, VaB's
    attention needs a last stage wider than VGG's 1x1."""
    from benchmark.models import build_model

    vgg = build_model("vgg19_bn", 10, width=4)
    refused = set()
    for name in builtin(DEFENSES, "defenses"):
        cls = DEFENSES.get(name)
        try:
            cls.check_model(cls.Params(), vgg)
        except ValueError:
            refused.add(name)
    assert refused == {"none", "dbalfa", "psbd", "vab"}


def test_which_defenses_refuse_mobilenet_and_vit():
    """MobileNetV3 has conv stages but no residual blocks or stem BatchNorm; ViT has one
    convolution (its patch embedding) and no BatchNorm: what reads conv stages or BatchNorm
    layers or named stages (VaB's attention) refuses it, nothing else."""
    refused: dict[str, set[str]] = {"mobilenet_v3_large": set(), "vit_b_16": set()}
    for model_name, names in refused.items():
        for name in builtin(DEFENSES, "defenses"):
            cls = DEFENSES.get(name)
            try:
                cls.check_model(cls.Params(), small_model(model_name))
            except ValueError as exc:
                names.add(name)
                # the refusal names the network, not the wrapper that resizes a ViT's inputs
                assert "Resized" not in str(exc), (name, str(exc))
                if model_name == "vit_b_16" and "VisionTransformer" not in str(exc):
                    assert name == "dbalfa", str(exc)  # DBALFA names what it reads instead
    assert refused["mobilenet_v3_large"] == {"none", "dbalfa", "asd", "psbd", "vab"}
    assert refused["vit_b_16"] == {"none", "dbalfa", "asd", "pipd", "pipd_median", "pipd_q90",
                                   "pipd_abl_seed", "psbd", "ibd_psc", "vab"}
