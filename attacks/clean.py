"""``clean``: the no-attack baseline. Nothing is poisoned and the "trigger" is the identity, so
its ASR is the rate at which clean non-target test images are classified as the target class,
and its CA is the reference that the attacks' CA is compared with."""

from __future__ import annotations

import torch

from attacks.base import Attack, register_attack
from benchmark.data import ImageSet


@register_attack
class Clean(Attack):
    name = "clean"

    def poison_count(self, train: ImageSet) -> int:
        return 0

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def describe(self) -> dict:
        return {**super().describe(), "poisoned": "nothing (no-attack baseline)"}
