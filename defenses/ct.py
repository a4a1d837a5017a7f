"""Confusion Training (Qi, Xie, Wang, Mittal; USENIX Security 2023): a proactive detector.
Training on the poisoned set while clean images carry deliberately wrong labels confuses every
benign correlation; only the backdoor's, the easiest to learn, survives, and the samples the
confused model still fits are the poisoned ones.

As Unispac/Fight-Poison-With-Poison runs it on CIFAR-10 (``ct_cleanser.py``,
``confusion_training.py``, ``config.py``; f2f02c2), six rounds k = 0..5 on a distilled set D_k
(D_0: the whole poisoned set):
1. pretraining: round 0 from a random model, round k from round k-1's *pretrained* model, on
   D_k (round 5: D_5 plus the clean set labelled (y + 1) mod C), ``pretrain_epochs`` (100, 100,
   40, 40, 40, 40) of SGD (lr 0.01, momentum 0.9, weight decay 1e-4, batch 32, no schedule, no
   augmentation);
2. confusion: from that model, ``iterations`` (6,000 x 4, then 2,000 x 2) of SGD (lr 0.001 x 3,
   then 0.01 x 3; momentum 0.7; weight decay 1e-4; BatchNorm in train mode); each iteration
   takes 32 clean images labelled with the backdoored model's prediction shifted by
   (r + i) mod C (r bumped past a zero shift, so the label is never the model's); even
   iterations add 32 samples of D_k and minimise ((lambda - 1) L_conf + L_insp) / lambda,
   lambda (20, 20, 20, 30, 30, 15), L_insp each sample's loss over sqrt(its class's share of
   D_k + 0.001) (round 5: 1); odd iterations minimise L_conf alone;
3. distillation (k < 5): the confused model's per-sample loss on the whole poisoned set (eval
   mode); D_{k+1} the lowest ``ratios`` (1/2, 1/5, 1/25, 1/50, 1/100) of it, and every class
   topped up with its lowest-loss samples to at least its size over 50 (round 4: 100);
4. detection on round 5's confused model: per class (by label), its penultimate features of
   the class reduced to 2-D (PCA), split into the samples it predicts as labelled and the rest;
   a Gaussian (mean, covariance + 0.001 on every entry) of each; the likelihood ratio is
   exp(mean log-likelihood under each sample's own group minus under the rest's Gaussian), 1
   where a group has fewer than 2 samples; a class is flagged when its ratio is the largest
   and above 1.5, or above 2; the flagged classes' samples predicted as labelled are poisoned.

Departures, each declared:
- the clean set is the defense context's trusted clean samples, ``per_class`` (200) of each
  class: 2,000 on CIFAR-10, the reference's budget, which it draws from the test set; here
  held-out training images where the cell has them, else ground-truth-clean training rows,
  which then, as the reference's test images, are neither inspected nor trained on as part of
  the poisoned set (``inspected_rows``) and are left out of TPR/FPR;
- the backdoored model whose predictions label the confusion batches is the suite's shared one
  (the preset's recipe; the reference's: 100 epochs, SGD 0.1, steps at 50 and 75, crop and
  flip);
- the 2-D reduction is exact PCA (``benchmark.clustering.pca``) where the reference calls the
  randomised ``torch.pca_lowrank``;
- the covariance is the unbiased estimate (numpy's ``cov``, as the reference), its Gaussian
  allowed to be singular as the reference's scipy call allows it (``gaussian_logpdf``);
- a confusion iteration's clean batch is the next of a shuffled pass over the clean set, as the
  reference's loader gives it; its D_k batch comes from the trainer's loop, which draws one at
  every iteration and leaves an odd iteration's unused, so an iteration inspects a random half
  of each pass where the reference's loader advances on even iterations only (the same number
  of samples per pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.clustering import pca
from benchmark.registry import UsageError
from benchmark.train import TrainConfig
from defenses.base import (
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    TrustedSamples,
    inspected_rows,
    register_defense,
    trusted_excluded,
)


@dataclass
class CTParams(DefenseParams):
    per_class: int = 200  # trusted clean images per class (2,000 on CIFAR-10)
    ratios: list[float] = field(default_factory=lambda: [1 / 2, 1 / 5, 1 / 25, 1 / 50, 1 / 100])
    lambdas: list[float] = field(default_factory=lambda: [20.0, 20.0, 20.0, 30.0, 30.0, 15.0])
    lrs: list[float] = field(default_factory=lambda: [0.001, 0.001, 0.001, 0.01, 0.01, 0.01])
    pretrain_epochs: list[int] = field(default_factory=lambda: [100, 100, 40, 40, 40, 40])
    iterations: list[int] = field(default_factory=lambda: [6000, 6000, 6000, 6000, 2000, 2000])
    pretrain_lr: float = 0.01
    momentum: float = 0.7  # the confusion rounds' SGD
    weight_decay: float = 1e-4
    batch_size: int = 32
    floors: list[int] = field(default_factory=lambda: [50, 50, 50, 50, 100])  # class size over this
    likely: float = 1.5  # a class's ratio, when it is the largest, that flags it
    certain: float = 2.0  # a class's ratio that flags it in any case

    def __post_init__(self) -> None:
        rounds = len(self.ratios) + 1
        for name in ("lambdas", "lrs", "pretrain_epochs", "iterations"):
            if len(getattr(self, name)) != rounds:
                raise UsageError(f"ct.{name} needs {rounds} values (one a round), got {getattr(self, name)}")
        if len(self.floors) != len(self.ratios):
            raise UsageError(f"ct.floors needs {len(self.ratios)} values (one a distillation)")


def confusion_shifts(iterations: int, classes: int) -> list[int]:
    """The label shift of each confusion iteration: (r + i) mod C, r bumped past a zero."""
    shifts, r = [], 0
    for i in range(iterations):
        if (r + i) % classes == 0:
            r += 1
        shifts.append((r + i) % classes)
    return shifts


def distill(losses: torch.Tensor, labels: torch.Tensor, ratio: float, floor: int) -> torch.Tensor:
    """Rows kept for the next round: the lowest ``ratio`` of the losses (at least two, what a
    training step's BatchNorm needs, on a set too small for the ratio), and each class topped up
    with its lowest-loss rows to at least its size // ``floor``."""
    keep = torch.zeros(len(losses), dtype=torch.bool)
    keep[losses.argsort()[:max(2, int(ratio * len(losses)))]] = True
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        need = len(rows) // floor - int(keep[rows].sum())
        if need > 0:
            missing = rows[~keep[rows]]
            keep[missing[losses[missing].argsort()[:need]]] = True
    return keep.nonzero().flatten()


def gaussian_logpdf(points: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Log-density of a Gaussian that may be singular, as scipy's ``multivariate_normal.logpdf``
    with ``allow_singular=True`` (the reference's call): the pseudo-inverse and pseudo-determinant
    over the eigenvalues above 1e6 x machine epsilon x the largest; -inf off its support (a
    point with a component along a dropped eigenvector)."""
    vals, vecs = torch.linalg.eigh(cov.double())
    cut = 1e6 * torch.finfo(torch.float64).eps * vals.abs().max()
    keep = vals > cut
    d = points.double() - mean.double()
    z = d @ vecs[:, keep]
    out = -0.5 * (int(keep.sum()) * math.log(2 * math.pi) + vals[keep].log().sum()
                  + (z ** 2 / vals[keep]).sum(1))
    off = (d @ vecs[:, ~keep]).norm(dim=1) > cut.sqrt()
    return out.masked_fill(off, -math.inf)


def _gaussian_loglik(points: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    return gaussian_logpdf(points, fit.mean(0), torch.cov(fit.T) + 0.001)


def likelihood_ratio(features: torch.Tensor, fitted: torch.Tensor) -> float:
    """exp(mean log-likelihood of the two-group model over the one-group model) of one class's
    2-D features, ``fitted`` marking the samples predicted as labelled; 1 where a group has
    fewer than 2 samples."""
    if fitted.sum() < 2 or (~fitted).sum() < 2:
        return 1.0
    x = features.double()
    single = _gaussian_loglik(x, x[~fitted])
    double = torch.where(fitted, _gaussian_loglik(x, x[fitted]), single)
    # inf where the rest's Gaussian is singular and a fitted sample lies off it; NaN (no flag)
    # where both are (numpy's arithmetic in the reference)
    return float(torch.exp((double - single).mean()))


def flagged_classes(ratios: dict[int, float], likely: float, certain: float) -> list[int]:
    """Classes whose ratio is the largest and above ``likely``, or above ``certain``. A NaN ratio
    makes the largest NaN, so only ``certain`` flags (numpy's max in the reference)."""
    values = list(ratios.values())
    top = math.nan if any(math.isnan(r) for r in values) else max(values, default=1.0)
    return [c for c, r in ratios.items() if (r == top and r > likely) or r > certain]


@register_defense
class CT(TrustedSamples, Defense):
    name = "ct"
    title = "Confusion Training (proactive poison detection)"
    Params = CTParams
    is_detector = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: CTParams = self.params
        clean = self.trusted(ctx)
        backdoored, _, reused = ctx.backdoored_model()
        tr, train = ctx.trainer, ctx.train
        n, classes = len(train), ctx.num_classes
        guide = tr.predict(backdoored, clean.images)  # what the confusion labels shift
        inspected = inspected_rows(ctx)  # D_0; trusted training rows are the clean set only
        images, labels = train.images[inspected], train.labels[inspected]
        kept = inspected
        base: nn.Module | None = None
        sizes: list[int] = []
        curves: dict[str, list[dict]] = {}  # each round's fits, for their timings
        with torch.random.fork_rng(devices=[]):  # the models' initialisation, cache or not
            torch.manual_seed(ctx.seed)
            for k in range(len(p.ratios) + 1):
                sizes.append(len(kept))
                base, curves[f"pretraining_{k}"] = self.pretrain(ctx, base, kept, k)
                confused, curves[f"confusion_{k}"] = self.confuse(ctx, base, kept, guide, k)
                if k < len(p.ratios):
                    losses = tr.per_sample_loss(confused, images, labels)
                    kept = inspected[distill(losses, labels, p.ratios[k], p.floors[k])]
        feats = tr.embeddings(confused, images)
        fitted = tr.predict(confused, images) == labels
        ratios = {}
        for c in range(classes):
            rows = (labels == c).nonzero().flatten()
            if len(rows) >= 3:
                ratios[c] = likelihood_ratio(pca(feats[rows], 2), fitted[rows])
        flagged = flagged_classes(ratios, p.likely, p.certain)
        isolated = torch.zeros(n, dtype=torch.bool)
        isolated[inspected] = fitted & torch.isin(labels, torch.tensor(flagged, dtype=torch.long))
        info: dict[str, Any] = {"inspected_model": "reused from cache" if reused else "trained",
                                "distilled_sizes": sizes, "flagged_classes": flagged,
                                "class_ratios": {str(c): r for c, r in ratios.items()},
                                "n_trusted": len(clean), "trusted_source": ctx.trusted_source}
        return DefenseResult(model=backdoored, isolated=isolated, scores=None, info=info,
                             excluded=trusted_excluded(ctx), curves=curves)

    def pretrain(self, ctx: DefenseContext, start: nn.Module | None, kept: torch.Tensor, k: int
                 ) -> tuple[nn.Module, list[dict]]:
        """Round k's pretrained model and its curve: from round k-1's model (a fresh one at round
        0), on D_k (and, in the last round, the clean set labelled one class on)."""
        p, train = self.params, ctx.train
        model = ctx.make_model()
        if start is not None:
            model.load_state_dict(start.state_dict())
        images, labels = train.images[kept], train.labels[kept]
        if k == len(p.ratios):
            shifted = (ctx.trusted.labels + 1) % ctx.num_classes
            images, labels = torch.cat([images, ctx.trusted.images]), torch.cat([labels, shifted])
        cfg = TrainConfig(epochs=p.pretrain_epochs[k], batch_size=p.batch_size, lr=p.pretrain_lr,
                          momentum=0.9, nesterov=False, weight_decay=p.weight_decay, schedule="constant",
                          augment=False, precision=ctx.train_cfg.precision)
        curve = ctx.trainer.fit(model, images, labels, cfg, seed=ctx.seed + k, desc=f"CT pretraining {k}",
                                checkpoint=ctx.checkpoint(f"pretraining {k}"))
        return model, curve

    def confuse(self, ctx: DefenseContext, base: nn.Module, kept: torch.Tensor, guide: torch.Tensor,
                k: int) -> tuple[nn.Module, list[dict]]:
        """Round k's confused model and its curve: ``iterations`` of the mixed objective from
        ``base``."""
        p, tr, train = self.params, ctx.trainer, ctx.train
        model = ctx.make_model()
        model.load_state_dict(base.state_dict())
        classes, lam = ctx.num_classes, p.lambdas[k]
        if k == len(p.ratios):
            weight = torch.ones(classes)
        else:
            share = torch.bincount(train.labels[kept], minlength=classes).float() / len(kept)
            weight = 1 / (share + 0.001).sqrt()
        weight = tr.to_device(weight)
        shifts = confusion_shifts(p.iterations[k], classes)
        clean_x, clean_guide = tr.to_device(ctx.trusted.images), tr.to_device(guide)
        g = torch.Generator().manual_seed(ctx.seed * 7 + k)
        cycle = {"order": torch.empty(0, dtype=torch.long), "at": 0}

        def clean_batch() -> torch.Tensor:  # a shuffled pass over the clean set, then another
            if cycle["at"] + p.batch_size > len(cycle["order"]):
                cycle["order"], cycle["at"] = torch.randperm(len(clean_x), generator=g), 0
            cycle["at"] += p.batch_size
            return tr.to_device(cycle["order"][cycle["at"] - p.batch_size:cycle["at"]])

        def step(forward, x, y, _idx, _g):  # noqa: ANN001, ANN202 - a confusion iteration
            i = tr.step_index  # the iteration a full run is at (a development run skips some)
            pick = clean_batch()
            conf_y = (clean_guide[pick] + shifts[min(i, len(shifts) - 1)]) % classes
            if i % 2:
                return F.cross_entropy(forward(tr.normalize(clean_x[pick])).float(), conf_y), None
            logits = forward(tr.normalize(torch.cat([clean_x[pick], x]))).float()
            conf = F.cross_entropy(logits[:p.batch_size], conf_y)
            w = weight[y]  # the reference's class-weighted mean: sum(loss / freq) / sum(1 / freq)
            inspect = (F.cross_entropy(logits[p.batch_size:], y, reduction="none") * w).sum() / w.sum()
            return ((lam - 1) * conf + inspect) / lam, None

        cfg = TrainConfig(epochs=1, batch_size=p.batch_size, lr=p.lrs[k], momentum=p.momentum,
                          nesterov=False, weight_decay=p.weight_decay, schedule="constant", augment=False,
                          steps_per_epoch=p.iterations[k], precision=ctx.train_cfg.precision)
        # one epoch: its checkpoint is the finished round (the clean-batch cycle lives in it)
        curve = tr.fit(model, train.images[kept], train.labels[kept], cfg, step=step,
                       seed=ctx.seed + 100 + k, desc=f"CT confusion {k}",
                       checkpoint=ctx.checkpoint(f"confusion {k}"))
        return model, curve
