"""Losses the defenses share, in the trainer's ``loss_fn(logits, targets, rows)`` form.

``rows`` are the batch's row indices into the training tensor, so a rule can depend on which
samples are in the batch (isolated or not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.train import LossFn


def lga_loss(gamma: float, batch_mean: bool) -> LossFn:
    """ABL's local gradient ascent, sign(l - gamma) * l: the loss is held near gamma, so samples
    learned faster than that (poisoned ones) end with the lowest losses. ``batch_mean``: on the
    batch-mean loss (the reference), else per sample."""
    def loss(logits: torch.Tensor, y: torch.Tensor, _rows: torch.Tensor) -> torch.Tensor:
        if batch_mean:
            l = F.cross_entropy(logits, y)
            return torch.sign(l - gamma) * l
        l = F.cross_entropy(logits, y, reduction="none")
        return (torch.sign(l - gamma) * l).mean()
    return loss


def selective_loss(isolated: torch.Tensor, lam: float) -> LossFn:
    """PIPD's Eq. 10: CE on the samples outside ``isolated``; gradient ascent (weight ``lam``) on
    the isolated samples the model still predicts as their label, nothing on the others."""
    def loss(logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        is_p = isolated[rows].to(ce.device)
        active = is_p & (logits.argmax(1) == y)
        return (ce * (~is_p)).sum() / len(y) - lam * (ce * active).sum() / len(y)
    return loss


def ascent_loss() -> LossFn:
    """ABL's unlearning: gradient ascent on the cross-entropy of every sample it is given."""
    def loss(logits: torch.Tensor, y: torch.Tensor, _rows: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(logits, y)
    return loss
