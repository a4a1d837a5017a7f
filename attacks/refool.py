"""Refool (Liu et al. ECCV 2020): reflection blending with natural images.

Each poisoned image gets one reflection image from a pool, through one of the two reflection
models of the original: "ghost" (the reflection plus a shifted, attenuated copy of itself) or
"blur" (an out-of-focus reflection: Gaussian blur); "mixed" alternates them. The result is
(1 - alpha) x + alpha r. The pool is drawn (seeded) from the training images themselves by
default: those images are excluded from poisoning and stay in the set as ordinary clean samples;
``reflection_root`` points at any ImageFolder of natural images instead. Dirty label by default
(as in the paper's table); ``clean_label: true`` poisons target-class images only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import load_image, scaled, to_float, to_uint8
from benchmark.data import IMAGE_SUFFIXES, ImageSet
from benchmark.registry import UsageError

MODES = ("ghost", "blur", "mixed")


@dataclass
class RefoolParams(AttackParams):
    mode: str = "mixed"
    alpha: float = 0.4  # weight of the reflection layer
    n_reflections: int = 50
    ghost_offset: int = 3  # pixels at 32x32 (scaled)
    ghost_attenuation: float = 0.6  # weight of the shifted copy
    blur_sigma: float = 1.5  # at 32x32 (scaled)
    reflection_root: str | None = None  # an ImageFolder (or flat folder) of natural images
    clean_label: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise UsageError(f"unknown Refool mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not 0 < self.alpha < 1:
            raise UsageError(f"refool alpha must be in (0, 1), got {self.alpha}")


@register_attack
class Refool(Attack):
    name = "refool"
    Params = RefoolParams

    @property
    def rate_of(self) -> str:  # type: ignore[override]
        return ("training set (all poisoned samples drawn from the target class)"
                if self.is_clean_label else "training set")

    def prepare(self, train: ImageSet) -> None:
        p = self.params
        if p.reflection_root:
            files = sorted(f for f in Path(p.reflection_root).expanduser().rglob("*")
                           if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UsageError(f"no images under reflection_root {p.reflection_root}")
            pick = torch.randperm(len(files), generator=self.generator(5))[:p.n_reflections]
            c, h, w = train.images.shape[1:]
            self.pool = torch.stack([load_image(str(files[i]), c, h, w) for i in pick])
            self.pool_rows = torch.zeros(0, dtype=torch.long)
        else:
            # from non-target classes, so a reflection never carries the target's own features
            candidates = (train.labels != p.target).nonzero().flatten()
            pick = torch.randperm(len(candidates), generator=self.generator(5))[:p.n_reflections]
            self.pool_rows = candidates[pick].sort().values
            self.pool = train.images[self.pool_rows]

    def eligible(self, train: ImageSet) -> torch.Tensor:
        mask = super().eligible(train)
        if hasattr(self, "pool_rows"):  # before prepare() (the pre-run check): a bound from above
            mask[self.pool_rows] = False
        return mask

    def reflect(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Blend reflection ``pool[which[i]]`` into image i; the model by the parity of which."""
        p = self.params
        side = min(images.shape[-2:])
        r = to_float(self.pool[which]).to(images.device)
        if r.shape[-2:] != images.shape[-2:]:  # a pool of another size (e.g. 32x32 onto 224x224)
            r = torch.nn.functional.interpolate(r, size=images.shape[-2:], mode="bilinear",
                                                align_corners=False)
        ghost = self.mode_of(which) == 0
        off = scaled(p.ghost_offset, side)
        shifted = torch.roll(r, shifts=(off, off), dims=(-2, -1))
        ghosted = (r + p.ghost_attenuation * shifted) / (1 + p.ghost_attenuation)
        sigma = p.blur_sigma * side / 32
        k = 2 * int(3 * sigma) + 1
        import torchvision.transforms.functional as TF  # lazily: torchvision costs ~2 s to import

        blurred = TF.gaussian_blur(r, [k, k], [sigma, sigma])
        layer = torch.where(ghost.to(images.device)[:, None, None, None], ghosted, blurred)
        return to_uint8((1 - p.alpha) * to_float(images) + p.alpha * layer)

    def mode_of(self, which: torch.Tensor) -> torch.Tensor:
        if self.params.mode == "ghost":
            return torch.zeros_like(which)
        if self.params.mode == "blur":
            return torch.ones_like(which)
        return which % 2

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        which = torch.randint(0, len(self.pool), (len(images),), generator=self.generator(6 + int(index[0])))
        return self.reflect(images, which)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        which = torch.randint(0, len(self.pool), (len(images),), generator=self.generator(7))
        return self.reflect(images, which)

    def describe(self) -> dict:
        return {**super().describe(), "reflection_source": self.params.reflection_root
                or f"{len(self.pool)} training images of non-target classes (not poisoned)"}
