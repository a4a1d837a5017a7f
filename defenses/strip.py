"""STRIP (Gao et al., ACSAC 2019) as a training-set filter: a detector on the backdoored model
(the cached No Defense model; it trains nothing).

Every training image is superimposed on ``n`` (100) clean images, x + ``alpha`` x' on
normalised tensors without clamping; its score is the mean entropy (natural log) of the
model's softmax over the blends. A trigger dominates its blends, so poisoned samples keep one
prediction and a low entropy. The threshold is the ``frr`` (10%) quantile of the same entropy
on clean images (each blended with clean images), and a sample below it is flagged.

Reference: vtu81/backdoor-toolbox ``cleansers_tool_box/strip.py`` (9d4d909) as its
``cleanser.py`` runs it: alpha 1, N 100, a 10% false-rejection rate, the perturbing images
drawn from a clean set of 2,000 test images, the same N for every image of a batch of 128.
Here the clean set is ``validation`` (0.2) of the clean test set, seeded (CA/ASR are then
measured on the rest, and the record says so). The original (garrisongys/STRIP 6588a38) is an
input-time detector on [0, 1] images with log2 entropy and a 1% quantile of a normal fitted to
benign entropies; its perturbing images come from the clean part of the training set.

The record's score is the negated entropy (higher: more suspicious).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import devrun
from benchmark.progress import Phase
from benchmark.train import Trainer
from benchmark.validate import within
from defenses.base import (
    BenignValidation,
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    register_defense,
)


@dataclass
class StripParams(DefenseParams):
    n: int = 100  # blends per image
    alpha: float = 1.0
    frr: float = field(default=0.1, metadata=within(0, 1))  # clean samples below the threshold
    validation: float = field(default=0.2, metadata=within(0, 1))  # clean share of the test set
    batch_size: int = 128  # images that share one draw of perturbing images


@torch.no_grad()
def strip_entropy(model: nn.Module, trainer: Trainer, images: torch.Tensor, perturbers: torch.Tensor,
                  n: int, alpha: float, batch_size: int, generator: torch.Generator,
                  blends_at_once: int = 2048) -> torch.Tensor:
    """Mean softmax entropy of every uint8 image over ``n`` blends with perturbing images (a
    fresh draw of ``n`` per batch of ``batch_size``), CPU float32 (N,)."""
    model = trainer.prepare_model(model)
    was_training = model.training
    model.eval()
    n = min(n, len(perturbers))
    out = []
    starts = range(0, trainer.loops.rows(len(images)), batch_size)
    phase = Phase(f"STRIP blends of {len(images)} images", 1, len(starts))
    for b, s in enumerate(starts, 1):
        phase.step(1, b)
        x = trainer.normalize(trainer.to_device(images[s:s + batch_size]))
        pick = torch.randperm(len(perturbers), generator=generator)[:n]
        pick = pick[trainer.loops.indices(n)]  # a development run: the first and last blends
        p = trainer.normalize(trainer.to_device(perturbers[pick]))
        total = torch.zeros(len(x), device=x.device)
        step = max(1, blends_at_once // len(x))
        for j in range(0, len(p), step):
            blend = (x[:, None] + alpha * p[None, j:j + step]).flatten(0, 1)
            prob = F.softmax(model(blend).float(), 1) + 1e-8
            total += -(prob * prob.log()).sum(1).view(len(x), -1).sum(1)
        out.append((total / len(pick)).cpu())
    model.train(was_training)
    return devrun.fill(torch.cat(out), len(images)) if out else torch.empty(0)


def frr_threshold(clean_entropy: torch.Tensor, frr: float) -> float:
    """The toolbox's boundary: the floor(frr x n)-th smallest clean entropy (0-based)."""
    ordered = clean_entropy.sort().values
    return float(ordered[min(int(frr * len(ordered)), len(ordered) - 1)])


@register_defense
class Strip(BenignValidation, Defense):
    name = "strip"
    title = "STRIP (entropy of superimposed predictions) as a training-set filter"
    Params = StripParams
    is_detector = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: StripParams = self.params
        if ctx.trusted is None:
            raise ValueError("STRIP needs a clean set (ctx.trusted): its validation share")
        model, _, reused = ctx.backdoored_model()
        clean = ctx.trusted.images
        g = torch.Generator().manual_seed(ctx.seed)
        train_h = strip_entropy(model, ctx.trainer, ctx.train.images, clean, p.n, p.alpha,
                                p.batch_size, g)
        clean_h = strip_entropy(model, ctx.trainer, clean, clean, p.n, p.alpha, p.batch_size, g)
        bound = frr_threshold(clean_h, p.frr)
        info = {"inspected_model": "reused from cache" if reused else "trained",
                "threshold": bound, "n_clean": len(clean),
                "clean_entropy_mean": float(clean_h.mean())}
        return DefenseResult(model=model, isolated=train_h < bound, scores=-train_h, info=info)
