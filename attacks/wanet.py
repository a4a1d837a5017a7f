"""WaNet (Nguyen & Tran 2021): an imperceptible, smooth warping of the image.

A random k x k field in [-1, 1] (normalised by its mean magnitude) is upsampled bicubically to
the image size and scaled by ``s / H``; poisoned images are resampled through
``(identity + field) * grid_rescale`` (the original scales the whole grid), clamped to [-1, 1].
Noise-mode cross samples (``cross_ratio`` x the poisoned count) get the same warp plus fresh
per-image noise and keep their true labels: they are the cover samples.

Threat model: the original controls training and warps a fresh ``pc`` share of every batch
(10% backdoor + 20% noise-mode cross, new noise each batch). This suite benchmarks data
poisoning, so the poisoned set is fixed once (5% + 10% cross by default); the original's rates
are ``--set wanet.rate=0.1`` (the cross samples follow at ``cross_ratio`` x the poisoned), and
``--set attack.repoison_every_epoch=true`` re-draws the warped rows and the noise every epoch
(training-time control at epoch granularity; No Defense only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import to_float, to_uint8


@dataclass
class WaNetParams(AttackParams):
    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    cross_ratio: float = 2.0  # cross (noise-mode) samples per poisoned sample


def warp_field(k: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """The smooth random field (1, h, w, 2), unit mean magnitude before upsampling."""
    ins = torch.rand((1, 2, k, k), generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    return F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def identity_grid(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack((xs, ys), 2)[None]


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    x = to_float(images)
    out = F.grid_sample(x, grid.to(x.device).expand(len(x), -1, -1, -1), align_corners=True)
    return to_uint8(out)


@register_attack
class WaNet(Attack):
    name = "wanet"
    Params = WaNetParams
    version = 2  # 2: grid_rescale scales the whole grid, as the original (1: the field only)
    cover_kind = "noise-mode cross samples: the warp plus random per-image noise, true labels kept"

    def grid(self, h: int, w: int) -> torch.Tensor:
        p = self.params
        field = warp_field(p.k, h, w, self.generator(2))
        return ((identity_grid(h, w) + p.s * field / h) * p.grid_rescale).clamp(-1, 1)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return warp(images, self.grid(*images.shape[-2:]))

    def cover_count(self, train) -> int:
        return round(self.params.cross_ratio * self.poison_count(train))

    def cover_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        # seeded by the chunk's first row: the same config gives the same cross samples
        noise = torch.rand((n, h, w, 2), generator=self.draw_generator(3 + int(index[0])))
        grid = (self.grid(h, w) + (noise * 2 - 1) / h).clamp(-1, 1)
        return to_uint8(F.grid_sample(to_float(images), grid.to(images.device), align_corners=True))
