"""Presets, ``--set`` overrides, and the resolved per-cell config whose hash is the cell's identity.

A resolved cell config holds everything that determines a result (dataset options, model,
training recipe, every attack and defense parameter, seed) and nothing about where files lie,
so the same cell has the same hash on every machine.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, fields
from typing import Any

from benchmark.cache import config_hash, hashed_fields
from benchmark.data import DATASETS
from benchmark.models import MODELS
from benchmark.registry import UsageError
from benchmark.train import TrainConfig
from benchmark.validate import check_fields, check_parameters, check_section

DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": {"train_size": None, "test_size": None, "subset_seed": 0},
    "imagefolder": {"train_size": None, "test_size": None, "subset_seed": 0, "image_size": 224},
}
EVAL_DEFAULTS = {"curve_size": 1000, "curve_every": 1}  # per-epoch CA/ASR curves on a test subset
# what each data / eval option may hold: (type, minimum)
DATA_TYPES: dict[str, tuple[Any, int]] = {"train_size": (int | None, 1), "test_size": (int | None, 1),
                                          "subset_seed": (int, 0), "image_size": (int, 8)}
EVAL_TYPES: dict[str, tuple[Any, int]] = {"curve_size": (int, 1), "curve_every": (int, 0)}
DEFAULT_MODEL = {"cifar10": "resnet18", "imagefolder": "resnet18_imagenet"}

# Presets. ``attacks``/``defenses`` hold per-component parameter overrides; every registered
# attack and defense is in the grid unless --attacks/--defenses narrow it.
PRESETS: dict[str, dict[str, Any]] = {
    # a few minutes for the whole grid on 2 CPU cores: exercises every code path, nothing more
    "smoke": {
        "dataset": "cifar10",
        "data": {"train_size": 1000, "test_size": 500},
        "model_params": {"width": 8},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "schedule": "onecycle"},
        "eval": {"curve_size": 250},
        "attacks": {"cl": {"ref_epochs": 2, "steps": 5},
                    "trojan": {"ref_epochs": 2, "optimize_steps": 20},  # CL's reference model
                    "dynamic": {"mask_epochs": 1, "epochs": 2, "width": 8},
                    "refool": {"n_candidates": 100, "n_reflections": 20, "select_rounds": 1,
                               "select_epochs": 1}},
        "defenses": {"pipd": {"pre_epochs": 3, "pre_augment": False, "rounds": 2,
                              "selective_epochs": 2, "selective_lr": 0.02},
                     # ABL's LGA settings equal PIPD's: one LGA model serves both
                     "abl": {"isolation_epochs": 3, "isolation_lr": 0.05, "isolation_schedule": None,
                             "weight_decay": None, "finetune_epochs": 2,
                             "finetune_lr": 0.02, "finetune_schedule": "onecycle",
                             "finetune_milestones": [], "unlearn_epochs": 2},
                     "none": {"retrain_epochs": 1},
                     "dbd": {"simclr_epochs": 1, "simclr_batch": 128, "head_epochs": 1,
                             "semi_epochs": 2, "semi_iterations": 4, "semi_batch": 32},
                     "asd": {"epochs": 4, "iterations": 4, "batch": 32, "grow_every_iterations": 4},
                     "strip": {"n": 8},  # 100 blends of 1,000 images: CI's slowest detector
                     "cbd": {"bias_epochs": 1, "epochs": 2, "milestones": [1], "disc_step": 1},
                     "dbr": {"sd_epochs": 1, "intra_epochs": 1, "epochs": 2}},
    },
    # the README's first run: the paper's point (No Defense learns the backdoor, PIPD isolates
    # it and trains it away) on 2 CPU cores in minutes; its own attacks and defenses by default.
    # No augmentation: with it, 10 epochs of 8,000 images never learn the 3x3 BadNets trigger
    # (ASR 6-10% with the grid or checkerboard pattern, at 5% or 10% poisoning, batch 128 or 32);
    # without, it is learned by epoch 6. CA is lower than with augmentation (~55%).
    "demo": {
        "dataset": "cifar10",
        "grid_attacks": ["badnets", "blended"],
        # pipd_median beside pipd: on Blended the paper's max over the seed breaks at this
        # scale and the median holds; it reuses PIPD's LGA model (one selective phase more)
        "grid_defenses": ["no_defense", "pipd", "pipd_median"],
        "data": {"train_size": 8000, "test_size": 2000},
        "model_params": {"width": 8},
        "train": {"epochs": 10, "batch_size": 128, "lr": 0.1, "schedule": "onecycle",
                  "warmup": 0.2, "augment": False},
        "eval": {"curve_size": 500},
        # 10 LGA epochs: with 6 the LGA model has not learned BadNets (ASR 21%) and the
        # poisoned seed holds no poisoned sample (TPR 38%); with 10: TPR 100, FPR 0.13
        "defenses": {"pipd": {"pre_epochs": 10, "pre_augment": False, "pre_lr": 0.05,
                              "rounds": 5, "selective_epochs": 6, "selective_lr": 0.05}},
    },
    # reduced scale calibrated for 2 CPU cores (docs/calibration.md)
    "quick": {
        "dataset": "cifar10",
        "data": {"train_size": 20000, "test_size": None},
        "model_params": {"width": 16},
        "train": {"epochs": 20, "batch_size": 128, "lr": 0.1, "schedule": "onecycle",
                  "warmup": 0.2},
        "eval": {"curve_size": 1000},
        "attacks": {"cl": {"ref_epochs": 8},
                    "trojan": {"ref_epochs": 8},  # one clean reference model serves CL and Trojan
                    # C's and G's lr constant: the original's schedules first step at epoch 100
                    # (C) and 200 (G) of 600, so 10 joint epochs lie inside their first stretch;
                    # scaled to 10 epochs they left C 2 epochs at full lr (ASR 74.88 against
                    # 80.99, docs/calibration.md: attacks at quick scale)
                    "dynamic": {"mask_epochs": 5, "epochs": 10, "width": 8,
                                "milestones_c": [], "milestones_g": []},
                    "refool": {"select_rounds": 3, "select_epochs": 4}},
        # per-attack training settings (every defense cell of the attack): A-Patch's partial-
        # opacity triggers are learned only late in training (ASR 0-16% through epoch 25 of 40,
        # 92-98% from epoch 31; 7.11 at 20 epochs): docs/calibration.md, attacks at quick scale
        "attack_train": {"adaptive_patch": {"epochs": 40}},
        "defenses": {"pipd": {"pre_epochs": 8, "pre_augment": False, "pre_lr": 0.05,
                              "rounds": 5, "selective_epochs": 12, "selective_lr": 0.05},
                     # ABL's LGA settings equal PIPD's (one LGA model serves both: the preset's
                     # schedule and weight decay, not ABL's constant lr and 1e-4); training on
                     # the rest gets PIPD's selective budget
                     "abl": {"isolation_epochs": 8, "isolation_lr": 0.05, "isolation_schedule": None,
                             "weight_decay": None, "finetune_epochs": 12,
                             "finetune_lr": 0.05, "finetune_schedule": "onecycle",
                             "finetune_milestones": []},
                     "none": {"retrain_epochs": 10},
                     # DBD and ASD at quick: epochs and MixMatch iterations cut to ~40 min a cell
                     "dbd": {"simclr_epochs": 8, "simclr_batch": 256, "head_epochs": 5,
                             "semi_epochs": 10, "semi_iterations": 160},
                     # ASD's stage-1 growth keeps the reference's rate per iteration (10 a class
                     # every 5,120): none within quick's 960 stage-1 iterations
                     "asd": {"epochs": 12, "iterations": 160},
                     # the reference's 100 epochs (x0.1 at 20 and 70) scaled to the preset's 20
                     "cbd": {"epochs": 20, "milestones": [4, 14], "disc_step": 4},
                     # 20 blends, not 100: 100 x 22,000 images took ~20 min a cell on 2 cores
                     "strip": {"n": 20}},
        # defenses whose own training does not converge at this scale (the leaderboard marks
        # their rows and links the diagnosis)
        "caveats": {"dbd": "docs/calibration.md#dbd-and-asd-at-quick-scale",
                    "asd": "docs/calibration.md#dbd-and-asd-at-quick-scale"},
    },
    # the paper's scale: full CIFAR-10, ResNet-18 width 64, paper epochs (GPUs)
    "full": {
        "dataset": "cifar10",
        "data": {},
        "model_params": {"width": 64},
        "train": {"epochs": 200, "batch_size": 128, "lr": 0.1, "schedule": "cosine"},
        "eval": {"curve_size": 2000},
        "defenses": {},
    },
}


def model_param_defaults(model: str) -> dict[str, Any]:
    sig = inspect.signature(MODELS.get(model))
    return {k: v.default for k, v in sig.parameters.items()
            if k != "num_classes" and v.default is not inspect.Parameter.empty}


def params_dict(cls: type) -> dict[str, Any]:
    return asdict(cls())


def parse_value(text: str) -> Any:
    """JSON if it parses (numbers, true/false, null, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def coerce(key: str, value: Any, default: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"--set {key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int | float) and isinstance(value, int | float) and not isinstance(value, bool):
        return type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
    if type(value) is not type(default):
        raise UsageError(f"{key}: expected {type(default).__name__}, got {value!r}")
    return value


def parse_sweeps(items: list[str]) -> list[tuple[str, list[Any]]]:
    """``--sweep KEY=[v1,v2,...]``: the grid runs every cell once per value (cartesian product
    over several sweeps)."""
    out = []
    for key, value in parse_sets(items):
        if not isinstance(value, list) or not value:
            raise UsageError(f"--sweep expects KEY=[v1,v2,...] (a JSON list), got {key}={value!r}")
        out.append((key, value))
    return out


def parse_sets(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        out.append((key.strip(), parse_value(text.strip())))
    return out


def _apply(section: dict, key: str, field_name: str, value: Any, where: str) -> None:
    if field_name not in section:
        raise UsageError(f"unknown --set key {key!r}; valid {where} keys: {', '.join(sorted(section))}")
    section[field_name] = coerce(key, value, section[field_name])


def lineage(cls: type) -> list[str]:
    """The registered names of a component and of the components it derives from, base first:
    a variant (``pipd_median``) takes its base's preset settings and ``--set pipd.`` keys."""
    names = [getattr(k, "name", "") for k in reversed(cls.__mro__)]
    return [n for i, n in enumerate(names) if n and n not in names[:i]]


def preset_params(section: dict[str, dict[str, Any]], cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in lineage(cls):
        out.update(section.get(name, {}))
    return out


def preset_train(spec: dict[str, Any]) -> dict[str, Any]:
    """A preset's base training recipe (before any attack's ``attack_train`` override)."""
    return {**asdict(TrainConfig()), **spec.get("train", {})}


def method_versions(attack_cls: type, defense_cls: type) -> dict[str, int]:
    """``attack_version`` / ``defense_version`` config keys, present only once a method's
    ``version`` is past 1: a changed method re-keys its own cells and artifacts while every
    other cell keeps its hash (and its finished records)."""
    pairs = (("attack_version", attack_cls.version), ("defense_version", defense_cls.version))
    return {key: v for key, v in pairs if v != 1}


def resolve_cell(preset: str, attack: str, defense: str, seed: int,
                 sets: list[tuple[str, Any]], *, dataset: str | None = None,
                 model: str | None = None) -> dict[str, Any]:
    """The fully resolved config of one cell: preset defaults, then ``--set`` overrides."""
    from attacks import ATTACKS
    from defenses import DEFENSES

    if preset not in PRESETS:
        raise UsageError(f"unknown grid {preset!r}; valid choices: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    top = dict(sets)
    dataset = str(top.get("dataset", dataset or spec["dataset"]))
    DATASETS.get(dataset)
    model = str(top.get("model", model or spec.get("model") or DEFAULT_MODEL[dataset]))
    model_defaults = model_param_defaults(model)
    attack_cls, defense_cls = ATTACKS.get(attack), DEFENSES.get(defense)

    data = {**DATA_DEFAULTS[dataset], **spec.get("data", {})}
    model_params = {**model_defaults,
                    **{k: v for k, v in spec.get("model_params", {}).items() if k in model_defaults}}
    # the preset's recipe, then the attack's own training settings (``attack_train``: applied
    # to every defense cell of that attack, so the comparison within the attack stays fair)
    train = {**preset_train(spec), **preset_params(spec.get("attack_train", {}), attack_cls)}
    eval_ = {**EVAL_DEFAULTS, **spec.get("eval", {})}
    attack_params = {**params_dict(attack_cls.Params), **preset_params(spec.get("attacks", {}), attack_cls)}
    defense_params = {**params_dict(defense_cls.Params),
                      **preset_params(spec.get("defenses", {}), defense_cls)}
    attack_names, defense_names = lineage(attack_cls), lineage(defense_cls)
    sections = {"data": data, "model": model_params, "train": train, "eval": eval_}

    for key, value in sets:
        if key in ("dataset", "model"):
            continue
        if "." not in key:
            raise UsageError(f"unknown --set key {key!r}; use dataset=, model= or a dotted key "
                             "such as train.epochs=, data.train_size=, pipd.rounds=, attack.rate=")
        ns, name = key.split(".", 1)
        if ns in sections:
            _apply(sections[ns], key, name, value, ns)
        elif ns in attack_names or (ns == "attack" and name in attack_params):
            _apply(attack_params, key, name, value, attack)
        elif ns in defense_names or (ns == "defense" and name in defense_params):
            _apply(defense_params, key, name, value, defense)
        elif ns in ("attack", "defense"):
            pass  # a generic key another component of the grid has (checked by validate_sets)
        elif ns not in ATTACKS and ns not in DEFENSES:
            valid = ["data", "model", "train", "eval", "attack", "defense", *ATTACKS, *DEFENSES]
            raise UsageError(f"unknown --set namespace {ns!r}; valid: {', '.join(valid)}")
        # a key for another attack/defense of the grid: validated in that cell

    # types and ranges of every value, then construction (each raises UsageError naming it)
    check_fields(TrainConfig, train, "train")
    check_section(data, DATA_TYPES, "data")
    check_section(eval_, EVAL_TYPES, "eval")
    check_parameters(MODELS.get(model), model_params, "model", minimum=1)
    check_fields(attack_cls.Params, attack_params, attack)
    check_fields(defense_cls.Params, defense_params, defense)
    TrainConfig.from_dict(train)
    attack_cls.Params(**attack_params)
    defense_cls.Params(**defense_params)
    if attack_params.get("repoison_every_epoch") and not defense_cls.accepts_repoisoning:
        plain = ", ".join(n for n in DEFENSES if DEFENSES.get(n).accepts_repoisoning)
        raise UsageError(f"attack.repoison_every_epoch=true is training-time control (a fresh "
                         f"poisoned set every epoch); {defense} cannot run it; valid: {plain}")
    return {
        "preset": preset, "dataset": dataset, "model": model, "attack": attack,
        "defense": defense, "seed": seed, "data": data, "model_params": model_params,
        "train": train, "eval": eval_, "attack_params": attack_params,
        "defense_params": defense_params, **method_versions(attack_cls, defense_cls),
    }


SECTION_NAMES = {"data": "data", "model_params": "model", "train": "train", "eval": "eval"}


def preset_cell(config: dict[str, Any]) -> dict[str, Any] | None:
    """The preset's own resolved cell for ``config``'s (attack, defense, seed), no ``--set``;
    None when a component or the preset is no longer known."""
    try:
        return resolve_cell(config["preset"], config["attack"], config["defense"], config["seed"],
                            [], dataset=config["dataset"], model=config["model"])
    except (UsageError, KeyError):
        return None


def overrides(config: dict[str, Any], *, attack_train: bool = True,
              base: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``--set``/``--sweep`` changed in a cell against its preset: (everything upstream of
    the defense, as ``train.epochs`` / ``badnets.rate`` keys; the defense's own options).
    ``attack_train``: a preset's per-attack training setting shows as train.* too (the dry run
    says it); False: it is part of the preset's cell (the tables note it once). ``base``: the
    ``preset_cell`` of ``config`` where the caller has it already."""
    base = base if base is not None else preset_cell(config)
    if base is None:  # a component no longer registered: nothing to compare
        return {}, {}
    if attack_train:
        base = {**base, "train": preset_train(PRESETS[config["preset"]])}
    upstream: dict[str, Any] = {}
    for section, ns in (*SECTION_NAMES.items(), ("attack_params", config["attack"])):
        upstream.update({f"{ns}.{k}": v for k, v in config[section].items()
                         if base[section].get(k) != v})
    defense = {k: v for k, v in config["defense_params"].items()
               if base["defense_params"].get(k) != v}
    return upstream, defense


def label(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items())


def validate_sets(sets: list[tuple[str, Any]], attacks: list[str], defenses: list[str]) -> None:
    """A component-specific key must name a field of that component (checked even when the
    component is outside this grid, so a typo never passes silently)."""
    from attacks import ATTACKS
    from defenses import DEFENSES

    for key, _ in sets:
        ns, _, name = key.partition(".")
        for reg in (ATTACKS, DEFENSES):
            if ns in reg and name not in {f.name for f in fields(reg.get(ns).Params)}:
                valid = ", ".join(f.name for f in fields(reg.get(ns).Params))
                raise UsageError(f"unknown --set key {key!r}; valid {ns} keys: {valid}")
        if ns == "attack" and attacks:
            if not any(name in {f.name for f in fields(ATTACKS.get(a).Params)} for a in attacks):
                raise UsageError(f"unknown --set key {key!r}: no selected attack has {name!r}")
        if ns == "defense" and defenses:
            if not any(name in {f.name for f in fields(DEFENSES.get(d).Params)} for d in defenses):
                raise UsageError(f"unknown --set key {key!r}: no selected defense has {name!r}")


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What names a cell (and keys its artifacts): the resolved config, minus the options added
    after results existed while they hold the default that reproduces the earlier behaviour
    (``benchmark.cache.OMIT_AT_DEFAULT``), so finished records keep their ids."""
    from attacks import ATTACKS
    from defenses import DEFENSES

    out = dict(config)
    for section, cls in (("train", TrainConfig), ("attack_params", ATTACKS.get(config["attack"]).Params),
                         ("defense_params", DEFENSES.get(config["defense"]).Params)):
        out[section] = hashed_fields(cls, config[section])
    return out


def cell_id(config: dict[str, Any]) -> str:
    return config_hash(identity(config))
