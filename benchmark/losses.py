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


def sce_per_sample(logits: torch.Tensor, y: torch.Tensor, alpha: float = 0.1, beta: float = 1.0
                   ) -> torch.Tensor:
    """Symmetric cross-entropy per sample, alpha * CE + beta * RCE (Wang et al. 2019), with the
    reference's clamps: probabilities to [1e-7, 1], the one-hot to [1e-4, 1] before its log (so
    RCE = -log(1e-4) * (1 - p_y) for a one-hot target)."""
    ce = F.cross_entropy(logits, y, reduction="none")
    p = logits.softmax(1).clamp(1e-7, 1.0)
    onehot = F.one_hot(y, logits.shape[1]).to(p.dtype).clamp(1e-4, 1.0)
    return alpha * ce - beta * (p * onehot.log()).sum(1)


def sce_loss(alpha: float = 0.1, beta: float = 1.0) -> LossFn:
    """The batch mean of ``sce_per_sample``, in the trainer's ``loss_fn`` form."""
    def loss(logits: torch.Tensor, y: torch.Tensor, _rows: torch.Tensor) -> torch.Tensor:
        return sce_per_sample(logits, y, alpha, beta).mean()
    return loss


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
            symmetric: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of its image, the negatives
    the other 2B - 2 views; cosine similarity over ``temperature``. ``symmetric=False`` anchors
    only the first views (what DBD's reference code computes)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = len(z1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    rows = slice(None) if symmetric else slice(0, b)
    return F.cross_entropy(sim[rows], targets[rows])
