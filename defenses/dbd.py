"""DBD, decoupling the training process (Huang et al., ICLR 2022).

1. Self-supervised: SimCLR on the training images without labels (two strong views, NT-Xent
   at temperature 0.5, projection head f-f-f/4 with BatchNorm and ReLU, f the backbone's feature
   width: 512-512-128 at width 64; SGD lr 0.4, momentum 0.9, a cosine spanning 10x the epochs:
   the reference anneals over 1000 epochs and fine-tunes from its epoch-100 checkpoint). It
   depends on the images only, so it is cached per (data, attack, model, seed, SimCLR
   settings) and shared by reruns and sweeps.
2. The backbone frozen, the linear head trained with symmetric cross-entropy (alpha 0.1,
   beta 1; Adam lr 0.002, 10 epochs); the backbone's features under no_grad in train mode as
   the reference (its BatchNorm statistics still move).
3. Every epoch: the current model's SCE on every sample (eval mode); the ``epsilon`` (50%)
   lowest are labelled, the rest unlabelled; MixMatch fine-tunes the whole network (Adam lr
   0.002, ``semi_iterations`` steps of ``semi_batch``; lambda_u ramps from ``ramp_start``, the
   reference's 10 head epochs of 190). Isolation: the last epoch's unlabelled half (FPR near 50%
   by construction). Crops pad by reflection, as the reference's configs.

Reference code (SCLBD/DBD) differences, noted: its SimCLR loss anchors only the first views
(``simclr_symmetric=false``), it blurs views with p 0.5 (sigma 0.1-2), and it ranks the SCE with
crop/flip augmentation on; here the paper's symmetric NT-Xent, no blur, and unaugmented losses.
It also keeps the head's Adam state into MixMatch (here a fresh Adam) and steps its cosine per
epoch (here per step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.augment import StrongAugment
from benchmark.losses import nt_xent, sce_loss, sce_per_sample
from benchmark.models import Backbone, classifier_head, embed
from benchmark.registry import UsageError
from benchmark.semisup import MixMatch, SemiSupervisedOptions
from benchmark.train import LambdaCallback
from benchmark.validate import at_least
from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense


@dataclass
class DBDParams(SemiSupervisedOptions, DefenseParams):  # + SCE and MixMatch options
    # 1. SimCLR
    simclr_epochs: int = 100  # the reference fine-tunes from its epoch-100 checkpoint ...
    simclr_schedule_span: float = 10.0  # ... of a cosine over 1000 epochs (lr still ~0.39 there)
    simclr_batch: int = 512
    simclr_lr: float = 0.4
    simclr_weight_decay: float = 1e-4
    temperature: float = 0.5
    simclr_symmetric: bool = True
    # 2. linear head with SCE
    head_epochs: int = 10
    head_lr: float = 0.002
    # 3. MixMatch fine-tuning
    semi_epochs: int = 190
    semi_iterations: int = 1024
    semi_batch: int = 64
    semi_lr: float = 0.002
    epsilon: float = 0.5  # labelled share: the lowest-SCE samples
    # where lambda_u's linear ramp starts, as a share of the MixMatch epochs: the reference counts
    # its 10 head epochs into a ramp of 190 (10/190), so the weight is full at epoch 180 of 190
    ramp_start: float = field(default=10 / 190, metadata=at_least(0))

    def ramp_offset(self) -> float:
        """Epochs of lambda_u's ramp already behind MixMatch's first step (reference: 10 of 190)."""
        return self.ramp_start * self.semi_epochs

    def __post_init__(self) -> None:
        if not 0 < self.epsilon < 1:
            raise UsageError(f"dbd epsilon must be in (0, 1), got {self.epsilon}")


def projection_head(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, max(16, dim // 4)))


def simclr_step(trainer, temperature: float, symmetric: bool, augment: StrongAugment):
    def step(forward, x, _y, _rows, gen):  # noqa: ANN001, ANN202 - a StepFn
        x = x.float() / 255
        v1, v2 = augment(x, gen), augment(x, gen)
        z = forward(trainer.normalize(torch.cat([v1, v2]) * 255)).float()
        return nt_xent(z[:len(x)], z[len(x):], temperature, symmetric), None
    return step


def label_lowest(losses: torch.Tensor, share: float) -> torch.Tensor:
    """Mask of the ``share`` lowest values (DBD's labelled half, ASD's stage-2 pool)."""
    mask = torch.zeros(len(losses), dtype=torch.bool)
    mask[losses.argsort()[:int(len(losses) * share)]] = True
    return mask


def sce_of(ctx: DefenseContext, model: nn.Module, alpha: float, beta: float) -> torch.Tensor:
    """Every training sample's SCE under ``model`` (eval mode, no augmentation, fp32)."""
    logits = ctx.trainer.logits(model, ctx.train.images)
    return sce_per_sample(logits, ctx.train.labels.cpu(), alpha, beta)


@register_defense
class DBD(Defense):
    name = "dbd"
    title = "DBD (decoupled training: SimCLR + SCE head + MixMatch)"
    Params = DBDParams
    # 2: the reference's SimCLR schedule (cosine over 10x the epochs, no Nesterov), lambda_u's
    # ramp start scaled with the epochs, reflect-padded crops
    version = 2

    def self_supervised(self, ctx: DefenseContext) -> tuple[nn.Module, list[dict], bool]:
        p: DBDParams = self.params
        cfg = ctx.train_cfg.replace(epochs=p.simclr_epochs, batch_size=p.simclr_batch, lr=p.simclr_lr,
                                    weight_decay=p.simclr_weight_decay, schedule="cosine",
                                    schedule_span=p.simclr_schedule_span, warmup=0.0,
                                    optimizer="sgd", nesterov=False)
        # the images decide it, not the labels or the training recipe
        key = {**ctx.key("images"), "phase": "simclr", "cfg": cfg.key(), "temperature": p.temperature,
               "symmetric": p.simclr_symmetric}

        def make() -> nn.Module:
            model = ctx.make_model()
            return nn.Sequential(Backbone(model), projection_head(classifier_head(model).in_features))

        simclr, curve, reused = ctx.trainer.fit_cached(
            ctx.cache, "simclr", key, make, ctx.train.images, ctx.train.labels, cfg, seed=ctx.seed,
            desc="DBD SimCLR",
            step=simclr_step(ctx.trainer, p.temperature, p.simclr_symmetric, StrongAugment()))
        return simclr[0].model, curve, reused

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: DBDParams = self.params
        model, simclr_curve, reused = self.self_supervised(ctx)
        tr = ctx.trainer
        # 2. the head on frozen features
        head = classifier_head(model)

        def head_step(forward, x, y, rows, gen):  # noqa: ANN001, ANN202 - a StepFn
            with torch.no_grad():
                feats = embed(model, tr.normalize(tr.augment(x, 4, gen, p.crop_mode)))
            logits = forward(feats).float()
            return sce_loss(p.sce_alpha, p.sce_beta)(logits, y, rows), logits

        head_cfg = ctx.train_cfg.replace(epochs=p.head_epochs, optimizer="adam", lr=p.head_lr,
                                         weight_decay=0.0, schedule="constant", warmup=0.0)
        model.train()
        # the frozen backbone runs in train mode, so its BatchNorm statistics move with the head
        head_curve = tr.fit(head, ctx.train.images, ctx.train.labels, head_cfg, step=head_step,
                            callbacks=[LambdaCallback(state=dict(model.named_buffers()))],
                            seed=ctx.seed, desc="DBD linear head", checkpoint=ctx.checkpoint("head"))
        # 3. MixMatch on the re-split data every epoch
        # the last split and the SCE it was drawn from: what the defense returns
        split = {"labelled": torch.zeros(len(ctx.train), dtype=torch.bool),
                 "losses": torch.zeros(len(ctx.train))}
        mix = MixMatch(tr, ctx.train.images, ctx.num_classes, p.mixmatch(rampup=p.semi_epochs),
                       steps_per_epoch=p.semi_iterations, epoch_offset=p.ramp_offset(),
                       crop_mode=p.crop_mode)

        def resplit(_epoch: int, m: nn.Module) -> torch.Tensor:
            split["losses"] = losses = sce_of(ctx, m, p.sce_alpha, p.sce_beta)
            split["labelled"] = labelled = label_lowest(losses, p.epsilon)
            ctx.note_split(~labelled, losses)
            mix.set_unlabelled((~labelled).nonzero().flatten())
            return labelled.nonzero().flatten()

        semi_cfg = ctx.train_cfg.replace(epochs=p.semi_epochs, optimizer="adam", lr=p.semi_lr,
                                         weight_decay=0.0, schedule="constant", warmup=0.0,
                                         batch_size=p.semi_batch, steps_per_epoch=p.semi_iterations)
        semi_curve = tr.fit(model, ctx.train.images, ctx.train.labels, semi_cfg, step=mix,
                            callbacks=[LambdaCallback(epoch_rows=resplit, state=split), mix, ctx.monitor],
                            seed=ctx.seed + 1, desc="DBD MixMatch", checkpoint=ctx.checkpoint("mixmatch"))
        return DefenseResult(
            model=model, isolated=~split["labelled"], scores=split["losses"],
            curves={"simclr": simclr_curve, "head": head_curve, "mixmatch": semi_curve},
            info={"self_supervised_model": "reused from cache" if reused else "trained",
                  "n_isolated": int((~split["labelled"]).sum())})
