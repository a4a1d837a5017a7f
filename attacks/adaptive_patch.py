"""Adaptive-Patch (Qi et al., ICLR 2023), dirty label with cover samples.

``n_triggers`` code-generated patches are blended at partial opacity (``train_alpha``). Each is
a seeded high-contrast pattern (every pixel and channel 0 or 255, like the BadNets-style and
Trojan-square patches among the original's triggers) on its own tile of a ``patch_size`` grid,
so patches never overlap: poisoned sample i gets patch i mod K. Cover samples
(``cover_ratio`` x the poisoned count, drawn from all classes) get patches the same way but keep
their true labels, which weakens the latent separation defenses rely on. Test images get every
patch at full strength (``test_alpha``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import blend, scaled
from benchmark.registry import UsageError


@dataclass
class AdaptivePatchParams(AttackParams):
    n_triggers: int = 4
    patch_size: int = 4  # at 32x32, scaled
    train_alpha: float = 0.5
    test_alpha: float = 1.0
    cover_ratio: float = 2.0  # cover samples per poisoned sample
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_triggers < 1:
            raise UsageError(f"adaptive_patch n_triggers must be >= 1, got {self.n_triggers}")
        for name in ("train_alpha", "test_alpha"):
            if not 0 < getattr(self, name) <= 1:
                raise UsageError(f"adaptive_patch {name} must be in (0, 1], got {getattr(self, name)}")


@register_attack
class AdaptivePatch(Attack):
    name = "adaptive_patch"
    Params = AdaptivePatchParams
    cover_kind = "samples carrying a partial-opacity patch with their true labels"
    version = 2  # 2: high-contrast non-overlapping patches (1: smooth, near-flat colour squares)

    def masks_and_patterns(self, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per trigger: a float region mask (K, 1, h, w) and a uint8 pattern (K, c, h, w)."""
        p = self.params
        s = scaled(p.patch_size, min(h, w))
        rows, cols = h // s, w // s
        if p.n_triggers > rows * cols:
            raise UsageError(f"adaptive_patch: {p.n_triggers} patches of {s}px do not fit a {h}x{w} image")
        g = torch.Generator().manual_seed(p.pattern_seed)
        tiles = torch.randperm(rows * cols, generator=g)[:p.n_triggers].tolist()
        masks = torch.zeros(p.n_triggers, 1, h, w)
        patterns = torch.zeros(p.n_triggers, c, h, w, dtype=torch.uint8)
        for k, tile in enumerate(tiles):
            top, left = (tile // cols) * s, (tile % cols) * s
            masks[k, :, top:top + s, left:left + s] = 1
            bits = torch.rand((c, s, s), generator=g) < 0.5
            patterns[k, :, top:top + s, left:left + s] = bits.to(torch.uint8) * 255
        return masks, patterns

    def cover_count(self, train) -> int:
        return round(self.params.cover_ratio * self.poison_count(train))

    def select_poison(self, train) -> torch.Tensor:
        self.poisoned = super().select_poison(train)
        return self.poisoned

    def select_cover(self, train, poisoned: torch.Tensor) -> torch.Tensor:
        self.covered = super().select_cover(train, poisoned)
        return self.covered

    def shared_triggers(self, images: torch.Tensor, index: torch.Tensor, chosen: torch.Tensor
                        ) -> torch.Tensor:
        """The j-th chosen sample gets trigger j mod K: equal shares (to within one)."""
        masks, patterns = self.masks_and_patterns(*images.shape[1:])
        k = torch.searchsorted(chosen, index) % self.params.n_triggers
        return blend(images, patterns[k], self.params.train_alpha, masks[k])

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.shared_triggers(images, index, self.poisoned)

    def cover_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.shared_triggers(images, index, self.covered)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        masks, patterns = self.masks_and_patterns(*images.shape[1:])
        out = images
        for k in range(self.params.n_triggers):
            out = blend(out, patterns[k], self.params.test_alpha, masks[k])
        return out
