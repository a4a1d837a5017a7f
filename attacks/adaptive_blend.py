"""Adaptive-Blend (Qi et al., ICLR 2023), dirty label with cover samples, built to beat isolation.

The original (backdoor-toolbox ``poison_tool_box/adaptive_blend.py``; the CIFAR-10 settings of
its README and ``create_poisoned_set.py``): a full-image blend trigger cut into ``pieces`` (16:
a 4x4 grid), of which a random half (``mask_rate``) is masked out afresh for every poisoned
image, blended at ``alpha`` 0.15; cover samples (``cover_rate`` of the set, drawn from the rest,
any class) carry the same kind of partial trigger with their true labels, which is what keeps
the poisoned samples close to the benign ones in the features and the loss. Test images get the
whole trigger at ``test_alpha`` 0.2. Poison and cover rates are the reference's 0.003 (150
images of CIFAR-10's 50,000); the paper's 5% is ``--set adaptive_blend.rate=0.05``.

Departures: the original blends a third-party image (Hello Kitty); the suite generates the
pattern by code from ``pattern_seed``, as Blended does: uniform colour noise drawn on a 32x32
grid, so per-pixel (high-frequency) noise on CIFAR-10 where the reference's cartoon is smooth,
bilinearly upsampled on larger images. The original draws poisoned rows from every class (a
target-class row keeps its label); the suite draws them from the non-target classes, as every
dirty-label attack here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import blend, scaled, seeded_pattern
from benchmark.data import ImageSet
from benchmark.registry import UsageError
from benchmark.validate import between, within

MASK_STREAMS = {"poison": 2, "cover": 3}  # draw_generator streams of the per-image masks


@dataclass
class AdaptiveBlendParams(AttackParams):
    rate: float = 0.003
    cover_rate: float = field(default=0.003, metadata=within(0, 1))  # of the whole training set
    alpha: float = field(default=0.15, metadata=between(0, 1))  # poisoned and cover images
    test_alpha: float = field(default=0.2, metadata=between(0, 1))
    pieces: int = 16  # a square number: the trigger is cut into a sqrt(pieces) grid
    mask_rate: float = field(default=0.5, metadata=within(0, 1))  # share of pieces masked per image
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        side = math.isqrt(self.pieces)
        if self.pieces < 1 or side * side != self.pieces:
            raise UsageError(f"adaptive_blend.pieces must be a square number, got {self.pieces}")


@register_attack
class AdaptiveBlend(Attack):
    name = "adaptive_blend"
    Params = AdaptiveBlendParams
    cover_kind = "samples carrying a partial blend trigger with their true labels"

    def pattern(self, c: int, h: int, w: int) -> torch.Tensor:
        return seeded_pattern(c, h, w, self.params.pattern_seed, smooth=scaled(1, min(h, w)))

    def cover_count(self, train: ImageSet) -> int:
        return round(self.params.cover_rate * len(train))

    def check(self, train: ImageSet) -> None:
        super().check(train)
        side = math.isqrt(self.params.pieces)
        h, w = train.images.shape[-2:]
        if h % side or w % side:
            raise UsageError(f"adaptive_blend: {h}x{w} images do not split into a {side}x{side} "
                             f"grid of pieces (adaptive_blend.pieces={self.params.pieces})")

    def select_poison(self, train: ImageSet) -> torch.Tensor:
        self.rows = {"poison": super().select_poison(train)}
        return self.rows["poison"]

    def select_cover(self, train: ImageSet, poisoned: torch.Tensor) -> torch.Tensor:
        self.rows["cover"] = super().select_cover(train, poisoned)
        return self.rows["cover"]

    def piece_masks(self, kind: str, index: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(len(index), 1, h, w) masks of the chosen rows ``index``: each masks its own random
        ``mask_rate`` share of the pieces, drawn once for all rows of ``kind`` in row order, so
        a row's mask does not depend on how the rows are batched."""
        p = self.params
        chosen = self.rows[kind]
        masked = round(p.mask_rate * p.pieces)
        draws = torch.rand(len(chosen), p.pieces, generator=self.draw_generator(MASK_STREAMS[kind]))
        rank = draws.argsort(1).argsort(1)  # each piece's rank in its row's random order
        keep = (rank >= masked)[torch.searchsorted(chosen, index)].float()
        side = math.isqrt(p.pieces)
        grid = keep.view(-1, 1, side, side)
        return grid.repeat_interleave(h // side, 2).repeat_interleave(w // side, 3)

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.partial(images, index, "poison")

    def cover_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.partial(images, index, "cover")

    def partial(self, images: torch.Tensor, index: torch.Tensor, kind: str) -> torch.Tensor:
        c, h, w = images.shape[1:]
        return blend(images, self.pattern(c, h, w), self.params.alpha, self.piece_masks(kind, index, h, w))

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        c, h, w = images.shape[1:]
        return blend(images, self.pattern(c, h, w), self.params.test_alpha)
