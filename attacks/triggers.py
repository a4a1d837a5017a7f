"""Trigger building blocks shared by the attacks: sizes scaled from 32x32, seeded patterns,
alpha blending, placement. All batched on uint8 (N, C, H, W) tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled(size: int, image_side: int) -> int:
    """A size given for 32x32 images, scaled to ``image_side`` (at least 1)."""
    return max(1, round(size * image_side / 32))


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


def blend(images: torch.Tensor, pattern: torch.Tensor, alpha: float | torch.Tensor,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - alpha * mask) * x + alpha * mask * pattern, in float, rounded back to uint8.

    ``pattern`` is uint8 broadcastable to ``images``; ``mask`` (float in [0, 1], broadcastable)
    limits the blend to a region; ``alpha`` may be a per-image tensor of shape (N, 1, 1, 1).
    """
    x, p = to_float(images), to_float(pattern.to(images.device))
    w = alpha if mask is None else alpha * mask.to(images.device)
    return to_uint8(x * (1 - w) + p * w)


def seeded_pattern(channels: int, h: int, w: int, seed: int, smooth: int = 1) -> torch.Tensor:
    """A uint8 pattern (C, h, w) drawn from ``seed``: uniform noise, or smooth colour blobs when
    ``smooth`` > 1 (noise at ``h/smooth`` resolution, bilinearly upsampled)."""
    g = torch.Generator().manual_seed(seed)
    lo_h, lo_w = max(1, h // smooth), max(1, w // smooth)
    noise = torch.rand((1, channels, lo_h, lo_w), generator=g)
    if (lo_h, lo_w) != (h, w):
        noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    return to_uint8(noise[0])


def corner_box(h: int, w: int, size: int, corner: str, margin: int = 0) -> tuple[slice, slice]:
    """Row and column slices of a ``size`` square in a corner: "br", "bl", "tr", "tl"."""
    rows = slice(h - margin - size, h - margin) if corner[0] == "b" else slice(margin, margin + size)
    cols = slice(w - margin - size, w - margin) if corner[1] == "r" else slice(margin, margin + size)
    return rows, cols


def stamp(images: torch.Tensor, patch: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    out = images.clone()
    out[:, :, rows, cols] = patch.to(out.device)
    return out


def load_image(path: str, channels: int, h: int, w: int) -> torch.Tensor:
    """A user's trigger image as uint8 (C, h, w), resized."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L").resize((w, h), Image.BILINEAR)
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return t.view(h, w, channels).permute(2, 0, 1).contiguous()


def watermark_mask(h: int, w: int) -> torch.Tensor:
    """A logo-like float mask (h, w): a ring of outer radius 0.3 * side crossed by a bar."""
    side = min(h, w)
    ys, xs = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    r = (ys ** 2 + xs ** 2).sqrt()
    ring = (r <= 0.3 * side) & (r >= 0.2 * side)
    bar = ((ys - xs).abs() <= 0.05 * side * 2 ** 0.5) & (r <= 0.3 * side)
    return (ring | bar).float()
