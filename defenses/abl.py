"""ABL, Anti-Backdoor Learning (Li et al., NeurIPS 2021).

1. Isolation: train from scratch with the LGA loss sign(l - gamma) * l, then isolate the 1%
   lowest-loss samples (eval mode, no augmentation). The LGA model is the same artifact as
   PIPD's pre-isolation model: when the settings agree, one training serves both.
2. Train on the other 99%, continuing from the isolation model (reference: 60 epochs, lr 0.1,
   0.01 from epoch 40).
3. Unlearning: gradient ascent on the isolated 1% (lr 5e-4), CA/ASR per epoch.

Reference code (bboylyg/ABL) differences, noted: its config defaults to 10 isolation epochs
and the Flooding loss, unlearns 5 epochs (the first only evaluates) with the fine-tuning
optimiser's momentum carried over, and uses weight decay 1e-4 and Cutout in fine-tuning; here
the paper's LGA and 20/20 epochs, a fresh SGD optimiser per phase, the base recipe's weight
decay and crop/flip augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from defenses.base import (
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    finetune_then_unlearn,
    isolate_lowest_loss,
    register_defense,
)


@dataclass
class ABLParams(DefenseParams):
    # 1. isolation (LGA)
    isolation_epochs: int = 20
    isolation_lr: float = 0.1
    isolation_augment: bool = False  # the reference trains the isolation model on plain tensors
    gamma: float = 0.5
    lga_batch_mean: bool = True
    isolation_ratio: float = 0.01
    # 2. training on the rest, from the isolation model
    finetune_epochs: int = 60
    finetune_lr: float = 0.1
    finetune_schedule: str = "step"
    finetune_milestones: list[int] = field(default_factory=lambda: [40])
    # 3. unlearning on the isolated samples
    unlearn_epochs: int = 20
    unlearn_lr: float = 5e-4


@register_defense
class ABL(Defense):
    name = "abl"
    title = "ABL (anti-backdoor learning)"
    Params = ABLParams

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: ABLParams = self.params
        lga_cfg = ctx.train_cfg.replace(epochs=p.isolation_epochs, lr=p.isolation_lr,
                                        augment=p.isolation_augment)
        model, lga_curve, reused = ctx.lga_model(lga_cfg, p.gamma, p.lga_batch_mean)
        isolated, losses = isolate_lowest_loss(ctx, model, p.isolation_ratio)
        finetune = ctx.train_cfg.replace(epochs=p.finetune_epochs, lr=p.finetune_lr,
                                         schedule=p.finetune_schedule,
                                         milestones=p.finetune_milestones)
        unlearn = ctx.train_cfg.replace(epochs=p.unlearn_epochs, lr=p.unlearn_lr,
                                        schedule="constant", warmup=0.0, augment=False)
        curves = finetune_then_unlearn(ctx, model, isolated, finetune, unlearn, ctx.seed + 1)
        return DefenseResult(
            model=model, isolated=isolated, scores=-losses,
            curves={"isolation": lga_curve, **curves},
            info={"isolation_model": "reused from cache (one LGA model serves ABL and PIPD)"
                  if reused else "trained",
                  "n_isolated": int(isolated.sum())})
