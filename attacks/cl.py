"""Label-consistent / clean-label attack (Turner et al. 2019).

Target-class images are made hard to classify with an untargeted L_inf PGD perturbation against
a clean reference model (trained once, cached), then a 3x3 black/white pattern is stamped in all
four corners. Labels never change. Test images get the corner pattern only.
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


@dataclass
class CLParams(AttackParams):
    eps: float = 16.0  # L_inf budget, of 255
    steps: int = 10
    step_size: float = 2.0  # of 255
    ref_epochs: int = 10  # clean reference model training
    patch_size: int = 3  # at 32x32, scaled


@register_attack
class CL(Attack):
    name = "cl"
    Params = CLParams
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
        patch = checkerboard(c, s)
        out = images
        for corner in ("tl", "tr", "bl", "br"):
            out = stamp(out, patch, *corner_box(h, w, s, corner))
        return out

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Untargeted PGD (no random start) within eps of the uint8 images."""
        tr = self.ctx.trainer
        x0 = tr.to_device(images).float() / 255
        y = tr.to_device(labels)
        eps, alpha = self.params.eps / 255, self.params.step_size / 255
        x = x0.clone()
        for _ in range(self.params.steps):
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
