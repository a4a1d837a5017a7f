"""ASD, adaptively splitting the poisoned dataset (Gao et al., CVPR 2023).

MixMatch from scratch throughout (Adam lr 0.002, ``iterations`` steps of ``batch`` per epoch):
the labelled set is a clean pool re-drawn before every epoch by the current model's SCE
(alpha 0.1, beta 1, eval mode), in three stages whose boundaries scale with ``epochs``
(reference 60 / 90 of 120):
1. class-aware: the trusted seed (``seed_per_class`` clean samples per class) plus, per observed
   class, its ``grow * (iterations so far // grow_every_iterations)`` lowest-SCE samples: the
   reference adds 10 a class every 5 epochs of 1024 iterations, and a preset that cuts the
   iterations per epoch keeps that rate per iteration (at ``quick``'s 160 iterations an epoch,
   stage 1's 960 iterations end before the first growth: its pool is the trusted seed);
2. the ``epsilon`` (50%) lowest-SCE samples overall;
3. meta split: a copy of the model trains its last two stages and head for one epoch on all
   data (Adam lr 0.015, cross-entropy); the pool is the 50% of samples whose SCE fell least.
The isolation is the samples outside the final pool; its scores are what that split ranked (the
SCE, or in stage 3 the loss reduction). Crops pad by reflection, as the reference's config, and
every virtual update draws a fresh shuffle.

Trusted seed samples: drawn from training images outside the cell's subset when there are any
(appended to ASD's training data), else, as the reference does, from the ground-truth-clean
training samples (then left out of TPR/FPR). The record says which. The reference computes the
split losses with crop/flip augmentation on; here without (as every loss ranking of the suite).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.losses import sce_per_sample
from benchmark.models import architecture
from benchmark.registry import UsageError
from benchmark.semisup import MixMatch, SemiSupervisedOptions
from benchmark.train import LambdaCallback
from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense
from defenses.dbd import label_lowest


@dataclass
class ASDParams(SemiSupervisedOptions, DefenseParams):  # + SCE and MixMatch options
    epochs: int = 120
    stage1: float = 0.5  # stage 1 ends at this share of the epochs (reference 60 of 120)
    stage2: float = 0.75  # stage 2 ends here (90 of 120)
    iterations: int = 1024
    batch: int = 64
    lr: float = 0.002
    seed_per_class: int = 10
    grow: int = 10  # stage 1: samples added per class ...
    grow_every_iterations: int = 5120  # ... every this many MixMatch iterations (5 x 1024)
    epsilon: float = 0.5
    meta_lr: float = 0.015
    meta_epochs: int = 1
    meta_layers: list[str] = field(default_factory=lambda: ["layer3", "layer4", "linear", "fc"])

    def __post_init__(self) -> None:
        if self.grow_every_iterations < 1:
            raise UsageError(f"asd grow_every_iterations must be at least 1, got "
                             f"{self.grow_every_iterations}")
        if not 0 <= self.stage1 <= self.stage2 <= 1:
            raise UsageError(f"asd stages must satisfy 0 <= stage1 <= stage2 <= 1, got "
                             f"{self.stage1}, {self.stage2}")
        if not 0 < self.epsilon < 1:
            raise UsageError(f"asd epsilon must be in (0, 1), got {self.epsilon}")


def stage1_growth(epoch: int, p: ASDParams) -> int:
    """Stage 1's samples per class beyond the seed at ``epoch`` (0-based): ``grow`` for every
    ``grow_every_iterations`` MixMatch iterations done (the reference: 10 every 5 x 1024)."""
    return p.grow * (epoch * p.iterations // p.grow_every_iterations)


def class_aware_pool(losses: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor, n: int,
                     num_classes: int) -> torch.Tensor:
    """Stage 1: the trusted rows plus each observed class's ``n`` lowest-loss other rows."""
    pool = trusted.clone()
    for c in range(num_classes):
        rows = ((labels == c) & ~trusted).nonzero().flatten()
        pool[rows[losses[rows].argsort()[:n]]] = True
    return pool


@register_defense
class ASD(Defense):
    name = "asd"
    title = "ASD (adaptive splitting + MixMatch)"
    Params = ASDParams
    # 2: a fresh shuffle for every virtual update, reflect-padded crops, scores = what the last
    # split ranked (AUROC of its own rule); 3: stage 1 grows per iteration, not per epoch
    version = 3

    @classmethod
    def trusted_per_class(cls, params: DefenseParams) -> int:
        return params.seed_per_class

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        if not any(name.split(".")[0] in params.meta_layers for name, _ in model.named_parameters()):
            raise ValueError(f"its virtual update trains the layers {params.meta_layers} (asd.meta_layers), "
                             f"which {architecture(model)} does not have")

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: ASDParams = self.params
        extra = self.trusted(ctx) if ctx.trusted_rows is None else None
        tr, k = ctx.trainer, ctx.num_classes
        n = len(ctx.train)
        # training data: the set itself plus appended trusted images (held-out mode)
        images = ctx.train.images if extra is None else torch.cat([ctx.train.images, extra.images])
        labels = ctx.train.labels if extra is None else torch.cat([ctx.train.labels, extra.labels])
        trusted = torch.zeros(len(labels), dtype=torch.bool)
        trusted[torch.arange(n, len(labels)) if extra is not None else ctx.trusted_rows] = True
        e1, e2 = round(p.stage1 * p.epochs), round(p.stage2 * p.epochs)

        def sce(model: nn.Module) -> torch.Tensor:
            return sce_per_sample(tr.logits(model, images), labels.cpu(), p.sce_alpha, p.sce_beta)

        def meta_split(model: nn.Module, epoch: int) -> torch.Tensor:
            before = sce(model)
            virtual = copy.deepcopy(model)
            for name, param in virtual.named_parameters():
                param.requires_grad_(name.split(".")[0] in p.meta_layers)
            cfg = ctx.train_cfg.replace(epochs=p.meta_epochs, optimizer="adam", lr=p.meta_lr,
                                        weight_decay=0.0, schedule="constant", warmup=0.0,
                                        steps_per_epoch=None, crop_mode=p.crop_mode)
            # the reference's loader reshuffles for every virtual update: a seed per epoch
            tr.fit(virtual, images, labels, cfg, seed=ctx.seed + 7 + 1000 * epoch,
                   desc="ASD virtual update")
            scores[:] = before - sce(virtual)  # the loss reduction: the largest are isolated
            return label_lowest(scores, p.epsilon)

        pool = trusted.clone()
        scores = torch.zeros(len(labels))  # what the last split ranked (higher: less trusted)
        # each epoch's stage and pool size, and the last split: what a resumed fit carries on
        log = {"stages": [], "pool": pool, "scores": scores}
        mix = MixMatch(tr, images, k, p.mixmatch(rampup=p.epochs), steps_per_epoch=p.iterations,
                       crop_mode=p.crop_mode)

        def resplit(epoch: int, model: nn.Module) -> torch.Tensor:
            if epoch < e2:  # stages 1 and 2 rank the SCE (stage 3 its own score)
                scores[:] = sce(model)
            if epoch < e1:
                pool[:] = class_aware_pool(scores, labels.cpu(), trusted, stage1_growth(epoch, p), k)
            elif epoch < e2:
                pool[:] = label_lowest(scores, p.epsilon)
            else:
                pool[:] = meta_split(model, epoch)
            log["stages"].append({"epoch": epoch + 1, "stage": 1 if epoch < e1 else 2 if epoch < e2 else 3,
                                  "pool": int(pool.sum())})
            mix.set_unlabelled((~pool).nonzero().flatten())
            ctx.note_split(~pool[:n], scores[:n])
            return pool.nonzero().flatten()

        torch.manual_seed(ctx.seed)
        model = ctx.make_model()
        cfg = ctx.train_cfg.replace(epochs=p.epochs, optimizer="adam", lr=p.lr, weight_decay=0.0,
                                    schedule="constant", warmup=0.0, batch_size=p.batch,
                                    steps_per_epoch=p.iterations)
        stage_split = LambdaCallback(epoch_rows=resplit, boundaries=(e1 - 1, e1, e2 - 1, e2), state=log)
        curve = tr.fit(model, images, labels, cfg, step=mix, callbacks=[stage_split, mix, ctx.monitor],
                       seed=ctx.seed, desc="ASD MixMatch", checkpoint=ctx.checkpoint("mixmatch"))
        for point, stage in zip(curve, log["stages"], strict=True):
            point.update(stage=stage["stage"], pool=stage["pool"])
        return DefenseResult(
            model=tr.prepare_model(model), isolated=~pool[:n], scores=scores[:n].clone(),
            curves={"mixmatch": curve}, excluded=trusted[:n] if extra is None else None,
            info={"trusted": ctx.trusted_source, "n_trusted": int(trusted.sum()),
                  "n_isolated": int((~pool[:n]).sum())})
