"""Adaptive-Patch (Qi et al., ICLR 2023), dirty label with cover samples.

The original's CIFAR-10 setting (backdoor-toolbox ``adaptive_patch``): four different kinds of
trigger, each blended at its own partial opacity on an equal share of the poisoned samples, and
the same on cover samples (``cover_ratio`` x the poisoned count, all classes) that keep their
true labels and so weaken the latent separation defenses rely on. Test images get two triggers at
full opacity. The original ships its triggers as 32x32 images; the suite generates them by code
with their geometry (read off those images) and opacities, no third-party image:

- ``corner_logo`` (``phoenix_corner_32``, alpha 0.5): a 5x5 blue/white logo in the bottom-right
  corner (seeded pattern);
- ``large_logo`` (``firefox_corner_32``, alpha 0.2): a filled disc of diameter 13 at the top
  right, 1 px from the edges, seeded smooth colours;
- ``four_corner`` (``badnet_patch4_32``, alpha 0.5): a 3x3 black/white patch in all four corners;
- ``square`` (``trojan_square_32``, alpha 0.3): an 8x8 seeded colour square 3 px from the bottom
  right corner;
- ``corner_logo2`` (``phoenix_corner2_32``, test only): the 5x5 logo in both bottom corners.

Test: ``corner_logo2`` then ``four_corner``, opacity 1 (the original's test pair). Sizes are
given at 32x32 and scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attacks.badnets import checkerboard
from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import blend, corner_box, scaled, seeded_pattern
from benchmark.registry import UsageError
from benchmark.validate import at_least

KINDS = ("corner_logo", "large_logo", "four_corner", "square", "corner_logo2")
TRAIN_KINDS = KINDS[:4]


@dataclass
class AdaptivePatchParams(AttackParams):
    triggers: list[str] = field(default_factory=lambda: list(TRAIN_KINDS))
    train_alphas: list[float] = field(default_factory=lambda: [0.5, 0.2, 0.5, 0.3])
    test_triggers: list[str] = field(default_factory=lambda: ["corner_logo2", "four_corner"])
    test_alpha: float = 1.0
    cover_ratio: float = field(default=2.0, metadata=at_least(0))  # cover samples per poisoned sample
    logo_size: int = field(default=5, metadata=at_least(1))  # at 32x32, scaled
    large_logo_size: int = field(default=13, metadata=at_least(1))
    square_size: int = field(default=8, metadata=at_least(1))
    corner_size: int = field(default=3, metadata=at_least(1))
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.triggers:
            if name not in TRAIN_KINDS:
                raise UsageError(f"unknown adaptive_patch trigger {name!r}; valid: {', '.join(TRAIN_KINDS)}")
        for name in self.test_triggers:
            if name not in KINDS:
                raise UsageError(f"unknown adaptive_patch test trigger {name!r}; valid: {', '.join(KINDS)}")
        if not self.triggers or not self.test_triggers:
            raise UsageError("adaptive_patch needs at least one training and one test trigger")
        if len(self.train_alphas) != len(self.triggers):
            raise UsageError(f"adaptive_patch: {len(self.triggers)} triggers but "
                             f"{len(self.train_alphas)} train_alphas")
        for a in (*self.train_alphas, self.test_alpha):
            if not 0 < a <= 1:
                raise UsageError(f"adaptive_patch opacities must be in (0, 1], got {a}")


def two_colour(c: int, s: int, g: torch.Generator) -> torch.Tensor:
    """A seeded blue/white logo (grey levels 0/255 with one channel)."""
    white = torch.rand((1, s, s), generator=g) < 0.5
    blue = torch.zeros(c, 1, 1, dtype=torch.uint8)
    blue[-1] = 255
    return torch.where(white, torch.full_like(blue, 255), blue).expand(c, s, s).clone()


def disc(s: int) -> torch.Tensor:
    """A filled disc of diameter ``s`` (float mask (s, s))."""
    r = torch.arange(s) - (s - 1) / 2
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= (s / 2) ** 2).float()


@register_attack
class AdaptivePatch(Attack):
    name = "adaptive_patch"
    Params = AdaptivePatchParams
    cover_kind = "samples carrying a partial-opacity trigger with their true labels"
    # 3: the original's four kinds of trigger (geometry of its images) and opacities, tested with
    # its pair (2: four random high-contrast 4x4 tiles at 0.5, all four at test; 1: smooth squares)
    version = 3

    def trigger(self, kind: str, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One trigger: a float region mask (1, h, w) and a uint8 pattern (c, h, w)."""
        p = self.params
        side = min(h, w)
        g = torch.Generator().manual_seed(p.pattern_seed * 10 + KINDS.index(kind))
        mask = torch.zeros(1, h, w)
        pattern = torch.zeros(c, h, w, dtype=torch.uint8)
        if kind in ("corner_logo", "corner_logo2"):
            s = scaled(p.logo_size, side)
            g = torch.Generator().manual_seed(p.pattern_seed * 10)  # one logo for both kinds
            logo = two_colour(c, s, g)
            for corner in ("br",) if kind == "corner_logo" else ("bl", "br"):
                rows, cols = corner_box(h, w, s, corner)
                mask[0, rows, cols] = 1
                pattern[:, rows, cols] = logo
        elif kind == "large_logo":
            s = scaled(p.large_logo_size, side)
            rows, cols = corner_box(h, w, s, "tr", margin=scaled(1, side))
            mask[0, rows, cols] = disc(s)
            pattern[:, rows, cols] = seeded_pattern(c, s, s, int(torch.randint(1 << 30, (1,), generator=g)),
                                                    smooth=max(2, s // 4))
        elif kind == "square":
            s = scaled(p.square_size, side)
            rows, cols = corner_box(h, w, s, "br", margin=scaled(3, side))
            mask[0, rows, cols] = 1
            pattern[:, rows, cols] = (torch.rand((c, s, s), generator=g) * 256).to(torch.uint8)
        else:  # four_corner
            s = scaled(p.corner_size, side)
            for corner in ("tl", "tr", "bl", "br"):
                rows, cols = corner_box(h, w, s, corner)
                mask[0, rows, cols] = 1
                pattern[:, rows, cols] = checkerboard(c, s)
        return mask, pattern * (mask > 0).to(torch.uint8)

    def bank(self, kinds: list[str], c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (K, 1, h, w) and patterns (K, c, h, w) of ``kinds``, in order."""
        pairs = [self.trigger(k, c, h, w) for k in kinds]
        return torch.stack([m for m, _ in pairs]), torch.stack([q for _, q in pairs])

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
        """The j-th chosen sample gets trigger j mod K at its opacity: equal shares (to within one)."""
        p = self.params
        masks, patterns = self.bank(p.triggers, *images.shape[1:])
        k = torch.searchsorted(chosen, index) % len(p.triggers)
        alphas = torch.tensor(p.train_alphas)[k].view(-1, 1, 1, 1).to(images.device)
        return blend(images, patterns[k], alphas, masks[k])

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.shared_triggers(images, index, self.poisoned)

    def cover_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.shared_triggers(images, index, self.covered)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        masks, patterns = self.bank(self.params.test_triggers, *images.shape[1:])
        out = images
        for k in range(len(masks)):
            out = blend(out, patterns[k], self.params.test_alpha, masks[k])
        return out
