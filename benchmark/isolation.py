"""Feature-discrepancy isolation shared by PIPD and NONE.

Both read the per-channel spatial max of conv outputs (``benchmark.models.collect_features``),
compare a suspicious group against a reference group channel by channel, keep the channels
where the suspicious group stands out most in each layer, and split samples by those channels
with a 2-class Jenks break (``benchmark.jenks``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmark import devrun
from benchmark.models import collect_features, conv_feature_layers
from benchmark.train import Trainer


def layer_features(model: nn.Module, trainer: Trainer, images: torch.Tensor,
                   stages: tuple[int, ...] = (2, 3, 4), layers: list[str] | None = None
                   ) -> tuple[torch.Tensor, list[slice], list[str]]:
    """(N, channels) spatial maxima of the conv layers of ``stages`` (or only ``layers``), the
    column slice of each layer, and the layer names, in forward order."""
    found = conv_feature_layers(model, tuple(stages))
    if layers is not None:
        missing = set(layers) - set(found)
        if missing:
            raise ValueError(f"unknown feature layers {sorted(missing)}; valid: {list(found)}")
        found = {k: v for k, v in found.items() if k in layers}
    feats = collect_features(model, found, trainer.eval_batches(images))
    feats = {name: devrun.fill(f, len(images)) for name, f in feats.items()}
    slices, start = [], 0
    for name in found:
        slices.append(slice(start, start + feats[name].shape[1]))
        start += feats[name].shape[1]
    return torch.cat([feats[n] for n in found], 1), slices, list(found)


def channel_discrepancy(features: torch.Tensor, high: torch.Tensor, low: torch.Tensor,
                        beta: float, quantile: float = 1.0) -> torch.Tensor:
    """Per channel: the ``quantile`` (1.0 = max) of the ``high`` group minus (mean + beta *
    population std) of the ``low`` group."""
    fh, fl = features[high], features[low]
    top = fh.amax(0) if quantile == 1.0 else torch.quantile(fh, quantile, dim=0)
    return top - (fl.mean(0) + beta * fl.std(0, unbiased=False))


def top_channels(discrepancy: torch.Tensor, slices: list[slice], rho: float,
                 top_k: int | None = None) -> torch.Tensor:
    """Column indices of the ``ceil(rho * C)`` (or ``top_k``) highest-discrepancy channels of
    every layer."""
    kept = []
    for sl in slices:
        c = sl.stop - sl.start
        k = min(c, top_k if top_k is not None else math.ceil(rho * c))
        kept.append(sl.start + discrepancy[sl].topk(k).indices)
    return torch.cat(kept)
