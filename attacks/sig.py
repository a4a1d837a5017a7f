"""SIG (Barni et al. 2019), clean label: a horizontal sine signal on target-class images only.

x' = clip(x + delta * sin(2 pi j f / W)) for column j; labels are never changed. ``rate`` is a
fraction of the whole training set, all drawn from the target class (5% of CIFAR-10 = half of
the target class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackParams, register_attack


@dataclass
class SIGParams(AttackParams):
    delta: float = 20.0  # amplitude, of 255
    freq: int = 6  # periods across the width
    test_delta: float | None = None  # None: the training amplitude


def sine(width: int, delta: float, freq: int) -> torch.Tensor:
    """The additive signal of one row (float, of 255)."""
    j = torch.arange(width, dtype=torch.float32)
    return delta * torch.sin(2 * math.pi * j * freq / width)


@register_attack
class SIG(Attack):
    name = "sig"
    Params = SIGParams
    clean_label = True
    rate_of = "training set (all poisoned samples drawn from the target class)"

    def add_signal(self, images: torch.Tensor, delta: float) -> torch.Tensor:
        signal = sine(images.shape[-1], delta, self.params.freq).to(images.device)
        return (images.float() + signal).round().clamp(0, 255).to(torch.uint8)

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.add_signal(images, self.params.delta)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        d = self.params.test_delta if self.params.test_delta is not None else self.params.delta
        return self.add_signal(images, d)
