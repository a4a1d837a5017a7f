"""``--set`` overrides on a preset (``benchmark.presets``), and the resolved per-cell config
whose hash is the cell's identity.

A resolved cell config holds everything that determines a result (dataset options, model,
training recipe, every attack and defense parameter, seed) and nothing about where files lie,
so the same cell has the same hash on every machine.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, fields
from typing import Any

from benchmark.cache import config_hash, hashed_fields, keyed_fields
from benchmark.data import DATASETS
from benchmark.models import MODELS
from benchmark.presets import DATASET_ATTACKS, PRESETS
from benchmark.registry import UsageError
from benchmark.train import TrainConfig
from benchmark.validate import check_fields, check_parameters, check_section

SUBSET_DEFAULTS: dict[str, Any] = {"train_size": None, "test_size": None, "subset_seed": 0}
EVAL_DEFAULTS = {"curve_size": 1000, "curve_every": 1}  # per-epoch CA/ASR curves on a test subset
# what each data / eval option may hold: (type, minimum)
DATA_TYPES: dict[str, tuple[Any, int]] = {"train_size": (int | None, 1), "test_size": (int | None, 1),
                                          "subset_seed": (int, 0), "image_size": (int, 8)}
EVAL_TYPES: dict[str, tuple[Any, int]] = {"curve_size": (int, 1), "curve_every": (int, 0)}


def data_defaults(dataset: str) -> dict[str, Any]:
    """A dataset's ``data.*`` options at their defaults: the subset's, then its own."""
    return {**SUBSET_DEFAULTS, **DATASETS.get(dataset).data}


def default_model(dataset: str) -> str | None:
    """The model a grid uses on ``dataset`` unless told otherwise (None: not registered here)."""
    return DATASETS.get(dataset).default_model if dataset in DATASETS else None

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
    model = str(top.get("model", model or spec.get("model") or default_model(dataset)))
    model_defaults = model_param_defaults(model)
    attack_cls, defense_cls = ATTACKS.get(attack), DEFENSES.get(defense)

    data = {**data_defaults(dataset), **spec.get("data", {})}
    model_params = {**model_defaults,
                    **{k: v for k, v in spec.get("model_params", {}).items() if k in model_defaults}}
    # the preset's recipe, then the attack's own training settings (``attack_train``: applied
    # to every defense cell of that attack, so the comparison within the attack stays fair)
    train = {**preset_train(spec), **preset_params(spec.get("attack_train", {}), attack_cls)}
    eval_ = {**EVAL_DEFAULTS, **spec.get("eval", {})}
    on_dataset = DATASET_ATTACKS.get(dataset, {})  # what the references change per dataset
    attack_params = {**params_dict(attack_cls.Params), **on_dataset.get("*", {}),
                     **preset_params(on_dataset, attack_cls),
                     **preset_params(spec.get("attacks", {}), attack_cls)}
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
    """What names a cell (and keys its artifacts): the resolved config, each method's and the
    training recipe's fields as ``benchmark.cache.hashed_fields`` keeps them (a field added
    since the records were made is left out while at its default, so they keep their ids)."""
    out = dict(config)
    for section, kind, name in (("train", "train", ""), ("attack_params", "attacks", config["attack"]),
                                ("defense_params", "defenses", config["defense"])):
        out[section] = hashed_fields(params_class(kind, name), config[section], keyed_fields(kind, name))
    return out


def params_class(kind: str, name: str = "") -> type:
    """The dataclass of a config section: ``TrainConfig``, or the registered method's Params."""
    if kind == "train":
        return TrainConfig
    from attacks import ATTACKS
    from defenses import DEFENSES

    return (ATTACKS if kind == "attacks" else DEFENSES).get(name).Params


def cell_id(config: dict[str, Any]) -> str:
    return config_hash(identity(config))
