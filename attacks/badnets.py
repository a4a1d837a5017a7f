"""BadNets (Gu et al. 2017): a small patch in the bottom-right corner, labels set to the target.

The default patch is the 3x3 black/white "grid" of ABL's code (``_gridTriger``), which the PIPD
reference builds on and which the paper's ImageNet row calls BadNets-Grid. ``pattern=white`` is
the white square of the BadNets paper; it has a blind spot where an image's corner is already
white (measured at quick scale: ASR 88.7, PIPD TPR 87.1, against 100 / 100 for the grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import corner_box, scaled, stamp
from benchmark.registry import UsageError

PATTERNS = ("grid", "white", "checkerboard")
# ABL's _gridTriger, rows top to bottom of the bottom-right 3x3 corner (1 = 255, 0 = 0): a
# checkerboard whose top-left cell is black
GRID = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.uint8)


@dataclass
class BadNetsParams(AttackParams):
    patch_size: int = 3  # at 32x32; scaled with the image size (21 at 224x224)
    # "grid": ABL's 3x3 pattern (scaled by cells); "white": a white square; "checkerboard": a
    # pixel-level black/white checkerboard (top-left white)
    pattern: str = "grid"
    margin: int = 0  # pixels between the patch and the image border (at 32x32, scaled)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pattern not in PATTERNS:
            raise UsageError(f"unknown BadNets pattern {self.pattern!r}; valid: {', '.join(PATTERNS)}")


def checkerboard(channels: int, s: int) -> torch.Tensor:
    grid = (torch.arange(s)[:, None] + torch.arange(s)[None, :]) % 2 == 0
    return (grid.to(torch.uint8) * 255).expand(channels, s, s).clone()


def grid_patch(channels: int, s: int) -> torch.Tensor:
    """ABL's 3x3 grid at side ``s``: each of its cells a block of about s/3 pixels."""
    cells = (torch.arange(s) * 3) // s  # pixel -> cell row/column
    return (GRID[cells[:, None], cells[None, :]] * 255).expand(channels, s, s).clone()


@register_attack
class BadNets(Attack):
    name = "badnets"
    Params = BadNetsParams

    def patch(self, channels: int, side: int) -> torch.Tensor:
        """The uint8 patch (C, s, s) for images of the given side."""
        s = scaled(self.params.patch_size, side)
        if self.params.pattern == "white":
            return torch.full((channels, s, s), 255, dtype=torch.uint8)
        if self.params.pattern == "grid":
            return grid_patch(channels, s)
        return checkerboard(channels, s)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        c, h, w = images.shape[1:]
        side = min(h, w)
        p = self.patch(c, side)
        m = scaled(self.params.margin, side) if self.params.margin else 0
        return stamp(images, p, *corner_box(h, w, p.shape[-1], "br", m))
