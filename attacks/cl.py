"""Label-consistent / clean-label attack (Turner et al. 2019).

Target-class images are made hard to classify with an untargeted L_inf PGD perturbation against
a clean reference model (trained once, cached), then a 3x3 black/white pattern is stamped in all
four corners. Labels never change. Test images get the corner pattern only.

The pattern is the original's ``[0 0 1; 0 1 0; 1 0 1]`` (1 = white) in the bottom-right corner,
mirrored into the other three (left-right, up-down, both); ``pattern=checkerboard`` stamps a
symmetric checkerboard instead (version 1's pattern). Larger images scale each cell to a block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.badnets import checkerboard
from attacks.base import Attack, AttackParams, register_attack
from attacks.reference import reference_model
from attacks.triggers import corner_box, scaled, stamp
from benchmark.data import ImageSet
from benchmark.registry import UsageError


@dataclass
class CLParams(AttackParams):
    eps: float = 16.0  # L_inf budget, of 255
    steps: int = 10
    step_size: float = 2.0  # of 255
    ref_epochs: int = 10  # clean reference model training
    patch_size: int = 3  # at 32x32, scaled
    pattern: str = "original"  # or "checkerboard"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pattern not in PATTERNS:
            raise UsageError(f"unknown CL pattern {self.pattern!r}; valid: {', '.join(PATTERNS)}")


PATTERNS = ("original", "checkerboard")
# the original's bottom-right pattern (1 = white)
ORIGINAL = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.uint8)


def corner_pattern(channels: int, s: int, corner: str) -> torch.Tensor:
    """The original's 3x3 pattern at side ``s``, mirrored for ``corner`` (the bottom-right one
    as is): uint8 (channels, s, s)."""
    cells = ORIGINAL
    if corner[0] == "t":
        cells = cells.flip(0)
    if corner[1] == "l":
        cells = cells.flip(1)
    rows = (torch.arange(s) * 3 // s)
    return (cells[rows][:, rows] * 255).expand(channels, s, s).clone()


@register_attack
class CL(Attack):
    name = "cl"
    Params = CLParams
    version = 2  # 2: the original's mirrored corner pattern by default (1: a checkerboard)
    clean_label = True
    rate_of = "training set (all poisoned samples drawn from the target class)"

    @classmethod
    def uses_model(cls, params: AttackParams) -> bool:
        return True

    def prepare(self, train: ImageSet) -> None:
        self.model = reference_model(self.ctx, train, self.params.ref_epochs)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        c, h, w = images.shape[1:]
        s = scaled(self.params.patch_size, min(h, w))
        out = images
        for corner in ("tl", "tr", "bl", "br"):
            patch = checkerboard(c, s) if self.params.pattern == "checkerboard" \
                else corner_pattern(c, s, corner)
            out = stamp(out, patch, *corner_box(h, w, s, corner))
        return out

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Untargeted PGD (no random start) within eps of the uint8 images."""
        self.ctx.trainer.note_work("CL PGD", self.params.steps, len(images), 1, len(images))
        k = self.ctx.trainer.loops.rows(len(images))  # a development run: a few rows, the rest as they are
        return torch.cat([self._pgd(images[:k], labels[:k]), images[k:]])

    def _pgd(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tr = self.ctx.trainer
        x0 = tr.to_device(images).float() / 255
        y = tr.to_device(labels)
        eps, alpha = self.params.eps / 255, self.params.step_size / 255
        x = x0.clone()
        for _ in tr.loops.indices(self.params.steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(self.model(tr.normalize(x * 255)), y)
            (grad,) = torch.autograd.grad(loss, x)
            x = (x.detach() + alpha * grad.sign()).clamp(x0 - eps, x0 + eps).clamp(0, 1)
        # rounding back to uint8 may overshoot by half a level: clamp to the integer budget
        base = images.float().to(x.device)
        budget = float(int(self.params.eps))
        out = torch.minimum(torch.maximum((x * 255).round(), base - budget), base + budget)
        return out.clamp(0, 255).to(torch.uint8).cpu()

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        labels = torch.full((len(images),), self.params.target, dtype=torch.long)
        return self.apply_trigger(self.perturb(images, labels))
