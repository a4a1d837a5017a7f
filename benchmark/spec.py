"""The cell spec: one frozen, typed value holding everything a cell's result depends on.

A cell is (dataset, model, training recipe, attack and its Params, defense and its Params,
evaluation settings, seed, development-run setting). ``CellSpec.resolve`` builds one from a
preset and ``--set`` overrides; ``to_config`` is its plain JSON form, the one records store and
Ray ships; ``from_config`` reads it back. The spec's identity (``id``) and its artifacts' keys
(``artifact_key``, from the one table in ``benchmark.keys``) are computed from it alone, so a
cell is the same on every machine and a report can say what a record is without today's presets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from benchmark.cache import config_hash
from benchmark.devrun import DevRun
from benchmark.train import TrainConfig

# the dict form's keys, in order; the versions and the development run only where present
_ORDER = ("preset", "dataset", "model", "attack", "defense", "seed", "data", "model_params",
          "train", "eval", "attack_params", "defense_params")


@dataclass(frozen=True)
class EvalConfig:
    """Per-epoch CA/ASR curves on fixed test subsets of ``curve_size`` images, every
    ``curve_every`` epochs (0: none)."""

    curve_size: int = 1000
    curve_every: int = 1


def _frozen(d: dict[str, Any]) -> MappingProxyType:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, eq=False)
class CellSpec:
    """One cell. Equal specs have equal ``id``; treat the Params inside as read-only."""

    preset: str
    dataset: str
    model: str
    attack: str
    defense: str
    seed: int
    data: MappingProxyType  # dataset options: train/test subset sizes, subset seed, image size
    model_params: MappingProxyType  # the model constructor's keyword arguments
    train: TrainConfig
    eval: EvalConfig
    attack_params: Any  # the attack's Params dataclass
    defense_params: Any  # the defense's Params dataclass
    attack_version: int = 1
    defense_version: int = 1
    fast_dev_run: DevRun | None = None  # a development run (benchmark.devrun), else None

    # --- construction -------------------------------------------------------------------
    @classmethod
    def resolve(cls, preset: str, attack: str, defense: str, seed: int,
                sets: list[tuple[str, Any]] | tuple = (), *, dataset: str | None = None,
                model: str | None = None) -> CellSpec:
        """A preset's cell with ``--set`` overrides, validated (``UsageError`` naming the bad
        value and the valid ones)."""
        from benchmark.config import resolve_cell

        return cls.from_config(resolve_cell(preset, attack, defense, seed, list(sets),
                                            dataset=dataset, model=model))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CellSpec:
        """The spec of a cell's plain form (a record's ``config``, a Ray trial's argument)."""
        from attacks import ATTACKS
        from defenses import DEFENSES

        config = json.loads(json.dumps(config))  # a private copy, JSON-shaped
        attack_cls, defense_cls = ATTACKS.get(config["attack"]), DEFENSES.get(config["defense"])
        dev = config.get("fast_dev_run")
        return cls(
            preset=config["preset"], dataset=config["dataset"], model=config["model"],
            attack=config["attack"], defense=config["defense"], seed=int(config["seed"]),
            data=_frozen(config["data"]), model_params=_frozen(config["model_params"]),
            train=TrainConfig.from_dict(config["train"]), eval=EvalConfig(**config["eval"]),
            attack_params=attack_cls.Params(**config["attack_params"]),
            defense_params=defense_cls.Params(**config["defense_params"]),
            attack_version=config.get("attack_version", 1),
            defense_version=config.get("defense_version", 1),
            fast_dev_run=DevRun(**dev) if dev else None)

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        return cls.from_config(json.loads(text))

    def replace(self, **changes: Any) -> CellSpec:
        """A copy with fields changed (``fast_dev_run=DevRun()``, ``seed=1``)."""
        config = self.to_config()
        for name, value in changes.items():
            if name not in _ORDER and name not in ("attack_version", "defense_version", "fast_dev_run"):
                raise TypeError(f"CellSpec has no field {name!r}")
            config[name] = _plain(value)
        if config.get("fast_dev_run") is None:
            config.pop("fast_dev_run", None)
        return CellSpec.from_config(config)

    # --- the plain form, identity and keys ---------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The plain JSON form (what records store as ``config``): a fresh copy each call."""
        out = {name: _plain(getattr(self, name)) for name in _ORDER}
        for name in ("attack_version", "defense_version"):
            if getattr(self, name) != 1:
                out[name] = getattr(self, name)
        if self.fast_dev_run is not None:
            out["fast_dev_run"] = self.fast_dev_run.as_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What names the cell and keys its artifacts (``benchmark.config.identity``)."""
        from benchmark.config import identity

        return identity(self.to_config())

    @cached_property
    def id(self) -> str:
        return config_hash(self.identity)

    def artifact_key(self, kind: str) -> dict[str, Any]:
        """The key of this cell's artifacts of ``kind`` (``benchmark.keys.ARTIFACTS``)."""
        from benchmark.keys import artifact_key

        return artifact_key(self.identity, kind)

    def artifact_keys(self, kinds: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        return {kind: self.artifact_key(kind) for kind in kinds}

    # --- what the spec names -----------------------------------------------------------
    @property
    def attack_cls(self) -> type:
        from attacks import ATTACKS

        return ATTACKS.get(self.attack)

    @property
    def defense_cls(self) -> type:
        from defenses import DEFENSES

        return DEFENSES.get(self.defense)

    @property
    def label(self) -> str:
        return f"{self.model} {self.dataset}/{self.attack}/{self.defense} seed {self.seed}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellSpec) and self.identity == other.identity

    def __hash__(self) -> int:
        return hash(self.id)


def _plain(value: Any) -> Any:
    """A spec field as JSON-shaped data."""
    if isinstance(value, MappingProxyType):
        return json.loads(json.dumps(dict(value)))
    if hasattr(value, "__dataclass_fields__"):
        return json.loads(json.dumps(asdict(value)))
    return value
