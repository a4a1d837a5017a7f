"""The defense interface: train on a (possibly poisoned) set, return a model and an isolation.

A defense never sees the ground truth: it gets the images and labels, a model factory, a
trainer and the base training recipe. It returns the trained model, its predicted-poison mask
and per-sample scores when it has them, per-epoch curves, and any further named masks (e.g.
per-round isolations) which the metrics step judges against the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.cache import ArtifactCache
from benchmark.data import ImageSet
from benchmark.registry import Registry
from benchmark.train import TrainConfig, Trainer

DEFENSES: Registry[type[Defense]] = Registry("defense")


@dataclass
class DefenseParams:
    """Options common to every defense (subclass to add a defense's own)."""


@dataclass
class DefenseContext:
    train: ImageSet  # the training set as received: images and (possibly poisoned) labels
    make_model: Callable[[], nn.Module]  # a fresh, randomly initialised model
    trainer: Trainer
    train_cfg: TrainConfig  # the base recipe (a No Defense run uses exactly this)
    seed: int
    cache: ArtifactCache  # for defense-side artifacts shared across cells (e.g. a pre-isolation model)
    # identity of everything upstream (dataset, attack, model, recipe, seed) + the defense's version
    cache_key: dict
    monitor: Callable[[int, nn.Module], dict[str, float]] | None = None  # CA/ASR curves
    trusted: ImageSet | None = None  # a small clean set, for defenses that assume one
    # the poison mask, given only to analyses that declare needs_ground_truth (PIPD's Table 3
    # fault-ratio study); None in every defense run
    ground_truth: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


@dataclass
class DefenseResult:
    model: nn.Module
    isolated: torch.Tensor | None = None  # bool (N,): samples the defense flags as poisoned
    scores: torch.Tensor | None = None  # float (N,): higher = more suspicious
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # further named isolations
    info: dict[str, Any] = field(default_factory=dict)


class Defense:
    """Base class. Subclasses set ``name`` and ``Params`` and implement ``run``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[DefenseParams]] = DefenseParams
    is_detector: ClassVar[bool] = False  # isolation only (SCALE-UP, DBALFA); no defended model
    version: ClassVar[int] = 1  # bump when results change for the same params (re-keys cells)

    def __init__(self, params: DefenseParams) -> None:
        self.params = params

    @classmethod
    def needs_ground_truth(cls, params: DefenseParams) -> bool:
        """True only for analysis settings that are defined by the ground truth (the record
        then says ``defense_info.ground_truth_used``); a defense proper never sees it."""
        return False

    def run(self, ctx: DefenseContext) -> DefenseResult:
        raise NotImplementedError


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: ``@register_defense class MyDefense(Defense): name = "my_defense"``."""
    DEFENSES.register(cls.name, cls)
    return cls
