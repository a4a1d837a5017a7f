"""PIPD (Chen, Wu, Zhou, AAAI 2024): progressive poisoned data isolation + selective training.

1. Pre-isolation: train from scratch with ABL's LGA loss sign(l - gamma) * l; rank samples by
   loss: the p lowest form the poisoned seed P_p, the q highest the benign seed P_b.
2. One-step isolation on the frozen model: per channel of every conv of stages 2-4 (pre-BN;
   1x1 shortcuts after their BN), spatial max f; d = max_{P_p} f - (mean_{P_b} f + beta std_{P_b} f);
   keep the top ceil(rho C) channels per layer; score = raw sum of kept values; 2-class Jenks
   split; the upper class is the predicted poisoned set D_p. ``seed_quantile`` < 1 replaces
   Eq. 4's max over P_p by that quantile (``pipd_median``: 0.5, ``pipd_q90``: 0.9), which one
   benign member of P_p cannot drag (docs/findings/pipd-beyond-badnets.md).
3. Progressive isolation: T rounds, P_b := P_b U D_b after each, P_p fixed, no retraining.
   The features are fixed (frozen model), so they are extracted once and every round reuses them.
4. Selective training (Eq. 10), from the pre-isolation model: CE on D_b, gradient ascent
   (weight lambda) on the samples of D_p that the model still predicts as their label.

Pre-isolation follows the paper's text: 200 epochs of the base recipe (at ``full``: crop/flip,
cosine schedule). The reference code (RorschachChen/PIPD, ``main_<attack>.py``) trains no
pre-isolation model: it loads a checkpoint and seed files named as ABL's isolation stage writes
them, whose training it does not record; ``pipd_abl_seed`` is that reading (ABL's 20-epoch LGA
model). The paper's model is kept as the default because selective training starts from it
and needs a converged model for the paper's CA. T = 8 is the paper's main setting; the
reference scripts' ``--round_num`` is 5 (``--set pipd.rounds=5``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.isolation import channel_discrepancy, layer_features, top_channels
from benchmark.jenks import jenks_upper
from benchmark.losses import selective_loss
from benchmark.models import conv_feature_layers
from benchmark.registry import UsageError
from benchmark.validate import at_least, one_of, within
from defenses.base import (
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    finetune_then_unlearn,
    isolate_lowest_loss,
    own_recipe,
    register_defense,
)

TRAININGS = ("selective", "unlearning")


@dataclass
class PIPDParams(DefenseParams):
    # pre-isolation (LGA)
    pre_epochs: int = 200
    pre_lr: float | None = None  # None: the base recipe's lr
    pre_augment: bool = True
    # None: the base recipe's (``pipd_abl_seed``: ABL's constant lr and weight decay 1e-4)
    pre_schedule: str | None = None
    pre_weight_decay: float | None = None
    gamma: float = 0.5
    lga_batch_mean: bool = True  # reference: LGA on the batch-mean loss; False: per sample
    p: float = field(default=0.01, metadata=within(0, 1))  # poisoned seed: lowest-loss share
    q: float = field(default=0.20, metadata=within(0, 1))  # benign seed: highest-loss share
    # Table 3: a seed of |P_p| samples, this share of them benign (drawn at random outside P_b)
    # and the rest the lowest-loss poisoned ones; built from the ground truth (an analysis, not
    # a defense). None: P_p as the loss ranking gives it; 0.0: a pure seed.
    fault_ratio: float | None = None
    # one-step isolation
    beta: float = 3.0
    # the quantile of P_p's features in Eq. 4: 1.0 is its max (the paper), 0.5 the median
    seed_quantile: float = 1.0
    rho: float = 0.04
    top_k: int | None = None  # fixed channels per layer instead of ceil(rho * C)
    stages: list[int] = field(default_factory=lambda: [2, 3, 4])
    layers: list[str] | None = None  # keep only these layer names (e.g. the last conv for SIG)
    jenks_inclusive: bool = True  # reference: flag score >= break
    jenks_method: str = field(default="exact", metadata=one_of("exact", "jenkspy"))
    # progressive isolation
    rounds: int = field(default=8, metadata=at_least(1))  # T (paper 8; reference scripts 5)
    # selective training (Eq. 10)
    selective_epochs: int = 20
    selective_lr: float = 0.01
    selective_augment: bool = True
    lam: float = 1.0  # weight of the gradient-ascent term
    # Fig. 5: "unlearning" trains on D_b for the selective budget, then ABL's gradient ascent
    # on D_p (unlearn_epochs at unlearn_lr) instead of Eq. 10
    training: str = "selective"
    unlearn_epochs: int = 20
    unlearn_lr: float = 5e-4

    def __post_init__(self) -> None:
        if not 0.0 <= self.seed_quantile <= 1.0:
            raise UsageError(f"pipd seed_quantile must be in [0, 1] (1 = max), got {self.seed_quantile}")
        if self.training not in TRAININGS:
            raise UsageError(f"unknown pipd training {self.training!r}; valid choices: "
                             f"{', '.join(TRAININGS)}")
        if self.fault_ratio is not None and not 0.0 <= self.fault_ratio <= 1.0:
            raise UsageError(f"pipd fault_ratio must be in [0, 1] or null, got {self.fault_ratio}")


def channel_scores(features: torch.Tensor, slices: list[slice], poison_seed: torch.Tensor,
                   benign_seed: torch.Tensor, beta: float, rho: float, top_k: int | None,
                   seed_quantile: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step isolation score of every sample, and the indices of the channels it sums."""
    d = channel_discrepancy(features, poison_seed, benign_seed, beta, seed_quantile)
    kept = top_channels(d, slices, rho, top_k)
    return features[:, kept].sum(1), kept


def faulty_seed(order: torch.Tensor, k: int, benign_seed: torch.Tensor, truth: torch.Tensor,
                ratio: float, seed: int) -> torch.Tensor:
    """Table 3's poisoned seed: ``k`` samples, ``round(ratio * k)`` of them benign (drawn at
    random outside the benign seed), the rest the lowest-loss poisoned samples of ``order``."""
    n_benign = round(ratio * k)
    poisoned_by_loss = order[truth[order]]
    if len(poisoned_by_loss) < k - n_benign:
        raise ValueError(f"fault_ratio {ratio}: {k - n_benign} poisoned seed samples wanted, "
                         f"{len(poisoned_by_loss)} exist")
    candidates = (~truth & ~benign_seed).nonzero().flatten()
    g = torch.Generator().manual_seed(seed)
    benign = candidates[torch.randperm(len(candidates), generator=g)[:n_benign]]
    mask = torch.zeros(len(truth), dtype=torch.bool)
    mask[poisoned_by_loss[:k - n_benign]] = True
    mask[benign] = True
    return mask


@register_defense
class PIPD(Defense):
    name = "pipd"
    title = "PIPD (progressive isolation + selective training)"
    Params = PIPDParams

    @classmethod
    def needs_ground_truth(cls, params: DefenseParams) -> bool:
        return getattr(params, "fault_ratio", None) is not None

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        conv_feature_layers(model, tuple(params.stages))  # the layers its isolation reads

    @classmethod
    def trains_final_model(cls, params: DefenseParams) -> bool:
        # selective_epochs=0 keeps the pre-isolation model (an isolation-only study); the
        # unlearning scheme trains on D_b for the same budget, then unlearns
        return params.selective_epochs > 0 or (params.training == "unlearning"
                                               and params.unlearn_epochs > 0)

    def pre_isolation_model(self, ctx: DefenseContext) -> tuple[nn.Module, list[dict], bool]:
        """The LGA model of these settings (cached, shared with ABL at equal settings): the
        model, its curve, and whether it came from the cache."""
        p: PIPDParams = self.params
        cfg = own_recipe(ctx.train_cfg.replace(epochs=p.pre_epochs, lr=p.pre_lr or ctx.train_cfg.lr,
                                               augment=p.pre_augment),
                         p.pre_schedule, p.pre_weight_decay)
        return ctx.lga_model(cfg, p.gamma, p.lga_batch_mean)

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: PIPDParams = self.params
        n = len(ctx.train)
        model, pre_curve, reused = self.pre_isolation_model(ctx)

        # seeds from the loss ranking under the pre-isolation model (eval mode, no augmentation)
        poison_seed, losses = isolate_lowest_loss(ctx, model, p.p)
        order = losses.argsort()
        benign_seed = torch.zeros(n, dtype=torch.bool)
        benign_seed[order[n - max(1, round(p.q * n)):]] = True
        if p.fault_ratio is not None:
            poison_seed = faulty_seed(order, int(poison_seed.sum()), benign_seed, ctx.ground_truth,
                                      p.fault_ratio, ctx.seed)

        features, slices, layer_names = layer_features(model, ctx.trainer, ctx.train.images,
                                                       tuple(p.stages), p.layers)
        masks = {"seed_poison": poison_seed.clone(), "seed_benign": benign_seed.clone()}
        benign = benign_seed.clone()
        for r in range(1, p.rounds + 1):
            scores, kept = channel_scores(features, slices, poison_seed, benign, p.beta, p.rho,
                                          p.top_k, p.seed_quantile)
            isolated = jenks_upper(scores, p.jenks_inclusive, p.jenks_method)
            masks[f"round_{r}"] = isolated
            benign = benign | ~isolated

        sel_cfg = ctx.train_cfg.replace(epochs=p.selective_epochs, lr=p.selective_lr,
                                        augment=p.selective_augment)
        if p.training == "unlearning":  # Fig. 5: ABL's scheme on this isolation, same budget
            unlearn = ctx.train_cfg.replace(epochs=p.unlearn_epochs, lr=p.unlearn_lr,
                                            schedule="constant", warmup=0.0, augment=False)
            curves = finetune_then_unlearn(ctx, model, isolated, sel_cfg, unlearn, ctx.seed + 1)
        else:
            curves = {"selective": []}
            if p.selective_epochs > 0:
                curves["selective"] = ctx.trainer.fit(
                    model, ctx.train.images, ctx.train.labels, sel_cfg,
                    loss_fn=selective_loss(ctx.trainer.to_device(isolated), p.lam),
                    callbacks=[ctx.monitor], seed=ctx.seed + 1, desc="pipd selective",
                    checkpoint=ctx.checkpoint("selective"))
        return DefenseResult(
            model=model, isolated=isolated, scores=scores,
            curves={"pre_isolation": pre_curve, **curves}, masks=masks,
            info={"layers": layer_names, "kept_channels": kept.tolist(),
                  "n_isolated": int(isolated.sum()), "ground_truth_used": p.fault_ratio is not None,
                  "pre_isolation_model": "reused from cache" if reused else "trained"})


@dataclass
class PIPDMedianParams(PIPDParams):
    seed_quantile: float = 0.5


@register_defense
class PIPDMedian(PIPD):
    """PIPD with the median of P_p in Eq. 4 instead of its max: one benign sample in the seed
    (an easy, low-loss image) no longer sets the discrepancy of every channel."""

    name = "pipd_median"
    title = "PIPD, median of the poisoned seed in Eq. 4"
    Params = PIPDMedianParams


@dataclass
class PIPDQ90Params(PIPDParams):
    seed_quantile: float = 0.9


@register_defense
class PIPDQ90(PIPD):
    """PIPD with the 90th percentile of P_p in Eq. 4: it skips the top tenth of the seed's values
    per channel, so benign members that are bright on a channel do not select it while they are
    fewer than a tenth of the seed, and keeps a trigger channel while more than a tenth of the
    seed carries the trigger (Table 3's 80% fault ratio leaves a fifth)."""

    name = "pipd_q90"
    title = "PIPD, 90th percentile of the poisoned seed in Eq. 4"
    Params = PIPDQ90Params


@dataclass
class PIPDABLSeedParams(PIPDParams):
    pre_epochs: int = 20
    pre_lr: float | None = 0.1
    pre_augment: bool = False
    pre_schedule: str | None = "constant"
    pre_weight_decay: float | None = 1e-4


@register_defense
class PIPDABLSeed(PIPD):
    """PIPD on ABL's isolation model, as the reference code runs it: its scripts load a
    checkpoint and seed files named as ABL's isolation writes them (``isolation1%_examples``)
    and train no pre-isolation model. The LGA settings are ABL's defaults (20 epochs, constant
    lr 0.1, no augmentation, weight decay 1e-4), so at equal presets ABL and this variant share
    one LGA model; selective training starts from it (the paper: from the 200-epoch model)."""

    name = "pipd_abl_seed"
    title = "PIPD on ABL's 20-epoch LGA model (the reference code's pre-isolation)"
    Params = PIPDABLSeedParams
