"""The attack interface: poison a training set, trigger a test set.

An attack is a class registered under a lower-case name with a ``Params`` dataclass of its
options. ``poison_train`` returns the poisoned set with its ground truth (poison mask, cover
mask, original labels); ``trigger_test`` returns the non-target test images with the trigger
(labels stay the true labels, so ASR and R-Acc can both be read off it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from benchmark.cache import ArtifactCache
from benchmark.data import ImageSet
from benchmark.registry import Registry, UsageError

ATTACKS: Registry[type[Attack]] = Registry("attack")


@dataclass
class AttackParams:
    target: int = 0
    rate: float = 0.05  # fraction of the whole training set (see each attack's ``rate_of``)

    def __post_init__(self) -> None:
        if not 0 < self.rate < 1:
            raise UsageError(f"poison rate must be in (0, 1), got {self.rate}")


@dataclass
class PoisonedTrainSet:
    """The training set as the defender receives it, plus the ground truth kept from it."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64, the labels the defender sees
    poison_mask: torch.Tensor  # bool: carries a trigger and (dirty-label) the target label
    cover_mask: torch.Tensor  # bool: carries a trigger but keeps its true label (benign)
    original_labels: torch.Tensor
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def as_imageset(self) -> ImageSet:
        """What the defense may see: images and labels, no ground truth."""
        return ImageSet(self.images, self.labels, self.classes)


@dataclass
class AttackContext:
    """What an attack may use to build its artifacts (cached across cells and re-runs)."""

    cache: ArtifactCache
    cache_key: dict  # identity of the inputs: dataset config, attack config, seed
    seed: int
    num_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    trainer: Any = None  # benchmark.train.Trainer, for attacks that train models
    make_model: Any = None  # () -> nn.Module, for attacks that need a reference model


class Attack:
    """Base class. Subclasses set ``name``, ``Params`` and implement ``apply_trigger``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[AttackParams]] = AttackParams
    clean_label: ClassVar[bool] = False
    rate_of: ClassVar[str] = "training set"  # what ``rate`` is a fraction of

    def __init__(self, params: AttackParams, ctx: AttackContext) -> None:
        if not 0 <= params.target < ctx.num_classes:
            raise UsageError(f"target class {params.target} outside 0..{ctx.num_classes - 1}")
        self.params = params
        self.ctx = ctx

    # -- to implement --------------------------------------------------------------------
    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a batch of uint8 images (N, C, H, W) and return the new batch."""
        raise NotImplementedError

    # -- overridable defaults -------------------------------------------------------------
    def prepare(self, train: ImageSet) -> None:
        """Build expensive artifacts (reference models, generators) before poisoning."""

    def poison_count(self, train: ImageSet) -> int:
        return round(self.params.rate * len(train))

    def select_poison(self, train: ImageSet) -> torch.Tensor:
        """Seeded choice of the samples to poison: non-target images (dirty label) or
        target-class images (clean label)."""
        labels = train.labels
        pool = (labels == self.params.target) if self.clean_label else (labels != self.params.target)
        candidates = pool.nonzero().flatten()
        k = self.poison_count(train)
        if k > len(candidates):
            raise UsageError(f"{self.name}: {k} samples to poison but only {len(candidates)} eligible")
        gen = torch.Generator().manual_seed(self.ctx.seed)
        return candidates[torch.randperm(len(candidates), generator=gen)[:k]].sort().values

    def poison_train(self, train: ImageSet) -> PoisonedTrainSet:
        idx = self.select_poison(train)
        images = train.images.clone()
        labels = train.labels.clone()
        images[idx] = self.apply_trigger(train.images[idx])
        if not self.clean_label:
            labels[idx] = self.params.target
        mask = torch.zeros(len(train), dtype=torch.bool)
        mask[idx] = True
        return PoisonedTrainSet(images, labels, mask, torch.zeros_like(mask), train.labels.clone(),
                                train.classes, info=self.describe())

    def trigger_test(self, test: ImageSet) -> ImageSet:
        keep = (test.labels != self.params.target).nonzero().flatten()
        return ImageSet(self.apply_trigger(test.images[keep]), test.labels[keep], test.classes)

    def describe(self) -> dict[str, Any]:
        return {"rate_of": self.rate_of, "clean_label": self.clean_label,
                "poisoned": "triggered samples relabelled to the target" if not self.clean_label
                else "triggered target-class samples (labels unchanged)"}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ``@register_attack class MyAttack(Attack): name = "my_attack"``."""
    ATTACKS.register(cls.name, cls)
    return cls
