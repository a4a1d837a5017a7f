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

from benchmark.cache import ArtifactCache, safe_artifact
from benchmark.data import ImageSet
from benchmark.registry import Registry, UsageError

ATTACKS: Registry[type[Attack]] = Registry(
    "attack", hint="an attack of your own is named with --plugin FILE, which registers it")


@dataclass
class AttackParams:
    target: int = 0
    rate: float = 0.05  # fraction of the whole training set (see each attack's ``rate_of``)
    # training-time control, the threat model of WaNet's and Input-aware's original code: every
    # epoch trains on a fresh draw of poisoned and cover samples (same trigger, new rows, new
    # per-sample noise) instead of one fixed poisoned set. Only a defense that trains plainly on
    # what it gets can run it (No Defense: ``Defense.accepts_repoisoning``)
    repoison_every_epoch: bool = False
    # all-to-all labels (BackdoorBench's all2all): a poisoned image of class y is labelled
    # (y + 1) mod C, drawn from every class, and the ASR counts a triggered test image of class y
    # classified as (y + 1) mod C, over the whole test set; dirty-label attacks whose trigger
    # does not depend on the target (``Attack.supports_all_to_all``)
    all_to_all: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.rate < 1:
            raise UsageError(f"poison rate must be in (0, 1), got {self.rate}")


@safe_artifact
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
    cache_key: dict  # the attack's artifacts' key (benchmark.keys: "attack" / "attack_model")
    seed: int
    num_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    trainer: Any = None  # benchmark.train.Trainer, for attacks that train models
    make_model: Any = None  # () -> nn.Module, for attacks that need a reference model
    # training images outside the cell's subset (never in the defender's set): natural images an
    # attacker may use (Refool's reflections); None when the subset is the whole training set
    held_out: ImageSet | None = None
    # the cell's ``train.precision``: models an attack trains (a reference model, Refool's
    # selection) train in it too, so ``--set train.precision=fp32`` is fp32 throughout
    precision: str = "auto"
    # keys of the other kinds of artifact an attack builds on (benchmark.keys.ARTIFACTS)
    keys: dict[str, dict] = field(default_factory=dict)

    def key(self, kind: str) -> dict:
        """The cell's key for artifacts of ``kind``; a context built by hand (tests) without
        ``keys`` gets its own key marked with the kind."""
        return self.keys.get(kind, {**self.cache_key, "kind": kind})


class Attack:
    """Base class. Subclasses set ``name``, ``Params`` and implement ``apply_trigger``.

    Hooks, all batched over uint8 (N, C, H, W) tensors:
    - ``apply_trigger``: the test-time trigger (full strength);
    - ``poison_images``: what the poisoned training samples get (default: the test trigger;
      A-Patch uses partial opacity, Dynamic a per-image generator output);
    - ``cover_images``: what cover / cross samples get (they keep their true labels).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[AttackParams]] = AttackParams
    clean_label: ClassVar[bool] = False
    rate_of: ClassVar[str] = "training set"  # what ``rate`` is a fraction of
    cover_kind: ClassVar[str] = ""  # what cover samples are, for the record ("" = none)
    # bump when a change alters what the attack produces for the same params: it re-keys the
    # attack's cached artifacts and cells (see benchmark.config.method_versions)
    version: ClassVar[int] = 1
    chunk: ClassVar[int] = 512  # images per batch when triggering (bounds memory at 224x224)
    # whether ``all_to_all`` applies: a dirty-label attack whose trigger is built without the
    # target class (Refool's selection and Dynamic's generator train towards it)
    supports_all_to_all: ClassVar[bool] = True
    draw: int = 0  # which draw of poisoned rows and per-sample randomness (the epoch, when re-poisoning)

    def __init__(self, params: AttackParams, ctx: AttackContext) -> None:
        if not 0 <= params.target < ctx.num_classes:
            raise UsageError(f"target class {params.target} outside 0..{ctx.num_classes - 1}")
        self.params = params
        self.ctx = ctx

    @classmethod
    def uses_model(cls, params: AttackParams) -> bool:
        """Whether the attack's artifacts depend on the model (reference model, generator)."""
        return False

    @property
    def is_clean_label(self) -> bool:
        return bool(getattr(self.params, "clean_label", self.clean_label))

    # -- to implement --------------------------------------------------------------------
    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the test-time trigger on a batch of uint8 images and return the new batch."""
        raise NotImplementedError

    # -- overridable defaults -------------------------------------------------------------
    def prepare(self, train: ImageSet) -> None:
        """Build expensive artifacts (reference models, generators) before poisoning."""

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The training-time trigger for the samples ``index`` (rows of the training set)."""
        return self.apply_trigger(images)

    def cover_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.poison_images(images, index)

    def poison_count(self, train: ImageSet) -> int:
        return round(self.params.rate * len(train))

    def cover_count(self, train: ImageSet) -> int:
        return 0

    def eligible(self, train: ImageSet) -> torch.Tensor:
        """Mask of the samples that may be poisoned: non-target (dirty label), target (clean
        label), every sample (all-to-all)."""
        if self.params.all_to_all:
            return torch.ones(len(train), dtype=torch.bool)
        return (train.labels == self.params.target) if self.is_clean_label \
            else (train.labels != self.params.target)

    def targets_of(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The label a poisoned image of each true label gets, and a triggered one should be
        classified as: the target, or (y + 1) mod C all-to-all."""
        if self.params.all_to_all:
            return (labels + 1) % num_classes
        return torch.full_like(labels, self.params.target)

    def check(self, train: ImageSet) -> None:
        """Raise ``UsageError`` for what poisoning ``train`` would fail on (called on every
        cell before any trains, so a bad rate is refused at once, not minutes into a grid)."""
        if self.params.all_to_all and (self.is_clean_label or not self.supports_all_to_all):
            why = "a clean-label attack never relabels" if self.is_clean_label else \
                "its trigger is built towards the target class"
            raise UsageError(f"{self.name}: all_to_all does not apply ({why})")
        k, n = self.poison_count(train), int(self.eligible(train).sum())
        if k > n:
            kind = "target-class" if self.is_clean_label else "non-target"
            raise UsageError(f"{self.name}: rate {self.params.rate} asks for {k} poisoned samples "
                             f"but the training set has {n} {kind} images")

    def generator(self, stream: int) -> torch.Generator:
        """A generator seeded by the cell seed; ``stream`` separates independent draws. For
        what defines the trigger (the same in every draw)."""
        return torch.Generator().manual_seed(self.ctx.seed * 1000 + stream)

    def draw_generator(self, stream: int) -> torch.Generator:
        """As ``generator``, for what a re-poisoning epoch draws afresh: which rows are poisoned
        or cover, per-sample noise and pairings (``draw`` 0: the fixed poisoned set). The seed
        stays under 2^32 (the CPU generator keeps 32 bits) for 4,000 draws; streams seeded by a
        row index past 1,000,003 (ImageNet) meet the next draw's stream of the row 1,000,003
        before: a harmless reuse of noise between different rows."""
        return torch.Generator().manual_seed(self.ctx.seed * 1000 + stream + 1_000_003 * self.draw)

    def select_poison(self, train: ImageSet) -> torch.Tensor:
        """Seeded choice of the samples to poison (sorted row indices)."""
        candidates = self.eligible(train).nonzero().flatten()
        k = self.poison_count(train)
        if k > len(candidates):
            raise UsageError(f"{self.name}: {k} samples to poison but only {len(candidates)} eligible")
        return candidates[torch.randperm(len(candidates), generator=self.draw_generator(0))[:k]].sort().values

    def select_cover(self, train: ImageSet, poisoned: torch.Tensor) -> torch.Tensor:
        """Seeded choice of cover samples among the rest (any class, labels kept)."""
        k = self.cover_count(train)
        if k == 0:
            return torch.zeros(0, dtype=torch.long)
        free = torch.ones(len(train), dtype=torch.bool)
        free[poisoned] = False
        candidates = free.nonzero().flatten()
        if k > len(candidates):
            raise UsageError(f"{self.name}: {k} cover samples but only {len(candidates)} left")
        return candidates[torch.randperm(len(candidates), generator=self.draw_generator(1))[:k]].sort().values

    def _chunked(self, fn, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for s in range(0, len(images), self.chunk):
            part = images[s:s + self.chunk]
            out.append(fn(part) if index is None else fn(part, index[s:s + self.chunk]))
        return torch.cat(out) if out else images.clone()

    def poison_train(self, train: ImageSet) -> PoisonedTrainSet:
        idx = self.select_poison(train)
        cover = self.select_cover(train, idx)
        images = train.images.clone()
        labels = train.labels.clone()
        if len(idx):
            images[idx] = self._chunked(self.poison_images, train.images[idx], idx)
        if len(cover):
            images[cover] = self._chunked(self.cover_images, train.images[cover], cover)
        if not self.is_clean_label:
            labels[idx] = self.targets_of(train.labels[idx], len(train.classes))
        mask = torch.zeros(len(train), dtype=torch.bool)
        mask[idx] = True
        cover_mask = torch.zeros(len(train), dtype=torch.bool)
        cover_mask[cover] = True
        return PoisonedTrainSet(images, labels, mask, cover_mask, train.labels.clone(),
                                train.classes, info=self.describe())

    def test_rows(self, test: ImageSet) -> torch.Tensor:
        """The rows of the test set the trigger is measured on (ASR): the non-target images
        (all of them, all-to-all)."""
        if self.params.all_to_all:
            return torch.arange(len(test))
        return (test.labels != self.params.target).nonzero().flatten()

    def trigger_test(self, test: ImageSet) -> ImageSet:
        keep = self.test_rows(test)
        return ImageSet(self._chunked(self.apply_trigger, test.images[keep]), test.labels[keep],
                        test.classes)

    def repoisoned(self, train: ImageSet, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of re-poisoning epoch ``epoch`` (0-based; 0 is the fixed set),
        for ``repoison_every_epoch``; ``prepare`` must have run (its artifacts are cached)."""
        self.draw = epoch
        try:
            fresh = self.poison_train(train)
        finally:
            self.draw = 0
        return fresh.images, fresh.labels

    def describe(self) -> dict[str, Any]:
        return {"rate_of": self.rate_of, "clean_label": self.is_clean_label,
                "poisoned": "triggered samples relabelled to the target" if not self.is_clean_label
                else "triggered target-class samples (labels unchanged)",
                "cover": self.cover_kind or "none"}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ``@register_attack class MyAttack(Attack): name = "my_attack"``."""
    ATTACKS.register(cls.name, cls)
    return cls
