"""TaCT (source-specific, Tang et al., USENIX Security 2021, the SCAn paper), dirty label with cover
samples, built to beat isolation.

The original (backdoor-toolbox ``poison_tool_box/TaCT.py``, CIFAR-10 settings of its
``config.py``): the trigger relabels images of the ``source`` class (1) only, to the target (0);
images of the ``cover_classes`` (5 and 7) carry the same trigger with their true labels, so the
trigger alone does not decide the class and the poisoned samples' features stay in the source
class's cluster. The trigger is Trojan's square (the toolbox's ``trojan_square_32.png``: an 8x8
colour square 3 px from the bottom-right corner, pasted at full opacity). Poison and cover rates
0.003 each of the whole set (150 images of CIFAR-10's 50,000). ASR is measured on the source
class only, the images the trigger is meant to flip.

Departure: the square's colours are drawn by code from ``pattern_seed`` (the suite ships no
third-party image), at the toolbox image's geometry; sizes are given at 32x32 and scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import corner_box, scaled
from benchmark.data import ImageSet
from benchmark.registry import UsageError
from benchmark.validate import at_least, within


@dataclass
class TaCTParams(AttackParams):
    rate: float = 0.003
    cover_rate: float = field(default=0.003, metadata=within(0, 1))  # of the whole training set
    source: int = field(default=1, metadata=at_least(0))
    cover_classes: list[int] = field(default_factory=lambda: [5, 7])
    square_size: int = field(default=8, metadata=at_least(1))  # at 32x32, scaled
    margin: int = field(default=3, metadata=at_least(0))  # from the bottom-right corner, scaled
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        taken = {self.target, self.source}
        if self.source == self.target or taken & set(self.cover_classes):
            raise UsageError(f"tact: source ({self.source}), target ({self.target}) and cover classes "
                             f"({self.cover_classes}) must differ")


@register_attack
class TaCT(Attack):
    name = "tact"
    Params = TaCTParams
    supports_all_to_all = False  # source-specific by definition
    rate_of = "training set (all poisoned samples drawn from the source class)"
    cover_kind = "cover-class samples carrying the trigger with their true labels"

    def square(self, c: int, h: int, w: int) -> tuple[slice, slice, torch.Tensor]:
        p = self.params
        side = min(h, w)
        s = scaled(p.square_size, side)
        rows, cols = corner_box(h, w, s, "br", margin=scaled(p.margin, side))
        g = torch.Generator().manual_seed(p.pattern_seed)
        return rows, cols, (torch.rand((c, s, s), generator=g) * 256).to(torch.uint8)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        rows, cols, patch = self.square(*images.shape[1:])
        out = images.clone()
        out[:, :, rows, cols] = patch.to(out.device)
        return out

    def eligible(self, train: ImageSet) -> torch.Tensor:
        return train.labels == self.params.source

    def check(self, train: ImageSet) -> None:
        super().check(train)
        p, k = self.params, len(train.classes)
        if max(p.source, *p.cover_classes) >= k:
            raise UsageError(f"tact: source {p.source} and cover classes {p.cover_classes} must be "
                             f"classes of this dataset (0-{k - 1})")
        n = len(self.cover_candidates(train))
        if self.cover_count(train) > n:
            raise UsageError(f"tact: cover_rate {p.cover_rate} asks for {self.cover_count(train)} cover "
                             f"samples but the cover classes hold {n} images")

    def cover_count(self, train: ImageSet) -> int:
        return round(self.params.cover_rate * len(train))

    def cover_candidates(self, train: ImageSet) -> torch.Tensor:
        """The rows of the cover classes."""
        return torch.isin(train.labels, torch.tensor(self.params.cover_classes)).nonzero().flatten()

    def select_cover(self, train: ImageSet, poisoned: torch.Tensor) -> torch.Tensor:
        """Seeded choice of cover samples among the cover classes (labels kept)."""
        candidates = self.cover_candidates(train)
        k = self.cover_count(train)
        pick = torch.randperm(len(candidates), generator=self.draw_generator(1))[:k]
        return candidates[pick].sort().values

    def test_rows(self, test: ImageSet) -> torch.Tensor:
        """The source class's test images: TaCT's ASR is measured on them only."""
        return (test.labels == self.params.source).nonzero().flatten()
