"""FTrojan (Wang et al., ECCV 2022): a trigger in the frequency domain of the chroma channels.

As BackdoorBench runs it (``attack/ftrojann.py``, ``utils/bd_img_transform/ftrojann.py``,
``config/attack/ftrojannn/default.yaml``; f02e353): the image goes to YCrCb (OpenCV's
``COLOR_RGB2YCrCb``: Y = 0.299 R + 0.587 G + 0.114 B, Cr = 0.713 (R - Y) + 128,
Cb = 0.564 (B - Y) + 128); each ``window`` x ``window`` (32) block of channels 1 and 2 (Cr, Cb)
goes through an orthonormal 2-D DCT-II, ``magnitude`` (30) is added to the coefficients at
``positions`` ((15, 15) and (31, 31)), and the inverse DCT and OpenCV's inverse conversion
(R = Y + 1.403 (Cr - 128), G = Y - 0.714 (Cr - 128) - 0.344 (Cb - 128), B = Y + 1.773
(Cb - 128)) bring it back. Poison rate 0.1, target 0, all-to-one. The original code
(SoftWiser-group/FTrojan) uses magnitude 20, target 8 and rate 0.02 on CIFAR-10: set them with
``--set``.

Every step is linear, so the trigger is one fixed RGB pattern added to the image: it is
computed once per image size and added in a batch. The pattern tiles whole windows; a border
narrower than a window (an image side not a multiple of 32) gets none, where the reference's
block loop fails (its partial block is indexed past its end).

Departures, each declared:
- the reference quantises to uint8 between steps (the YCrCb image, a truncating cast after the
  inverse DCT that wraps out-of-range values and lowers about one value in seven by a level,
  the untouched Y channel included, then the RGB image); here the image is rounded and clamped
  once, at the end;
- BackdoorBench draws the poisoned rows from every class, the target's included (those keep
  their label); here they are drawn from the non-target classes, as for every dirty-label
  attack of the suite, the same count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from attacks.base import Attack, AttackParams, register_attack
from benchmark.registry import UsageError

# OpenCV's YCrCb <-> RGB for 8-bit images: the chroma rows of the inverse, per unit of Cr, Cb
CHROMA_TO_RGB = torch.tensor([[1.403, 0.0], [-0.714, -0.344], [0.0, 1.773]])


@dataclass
class FTrojanParams(AttackParams):
    rate: float = 0.1  # BackdoorBench's pratio; the paper's setting is 0.05
    magnitude: float = 30.0
    window: int = 32  # DCT block side
    positions: list[list[int]] = field(default_factory=lambda: [[15, 15], [31, 31]])

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [p for p in self.positions if len(p) != 2 or not all(0 <= v < self.window for v in p)]
        if bad:
            raise UsageError(f"ftrojan positions must be [u, v] pairs in 0..{self.window - 1}, got {bad}")


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (n x n): coefficients = D @ block @ D.T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    x = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def frequency_pattern(h: int, w: int, window: int, positions: list[list[int]],
                      magnitude: float) -> torch.Tensor:
    """The RGB change (3, h, w), float64, that adding ``magnitude`` at ``positions`` of every
    whole window's DCT of Cr and Cb makes."""
    coeffs = torch.zeros(window, window, dtype=torch.float64)
    for u, v in positions:
        coeffs[u, v] += magnitude
    d = dct_matrix(window)
    block = d.T @ coeffs @ d  # the inverse DCT of the added coefficients
    chroma = torch.zeros(h, w, dtype=torch.float64)
    rows, cols = h - h % window, w - w % window
    chroma[:rows, :cols] = block.repeat(rows // window, cols // window)
    # the same change in Cr and in Cb, mapped to R, G, B
    return CHROMA_TO_RGB.double().sum(1)[:, None, None] * chroma


@register_attack
class FTrojan(Attack):
    name = "ftrojan"
    Params = FTrojanParams

    def check(self, train) -> None:  # noqa: ANN001 - an ImageSet
        if train.images.shape[1] != 3:
            raise UsageError("ftrojan works in YCrCb and needs RGB images")
        super().check(train)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        delta = frequency_pattern(h, w, self.params.window, self.params.positions,
                                  self.params.magnitude).float().to(images.device)
        return (images.float() + delta).round().clamp(0, 255).to(torch.uint8)
