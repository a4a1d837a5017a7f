"""ASSET (Pan et al., USENIX Security 2023): a detector that trains a fresh model to keep its loss
low on clean data and push it up on what looks poisoned, then flags the training samples whose
loss ends high (the "offset" between the two).

As the reference runs it (ruoxi-jia-group/ASSET ``ASSET_demo.ipynb`` and ``new_poi_util.py``,
c050590; BackdoorBench's port ``detection_pretrain/asset.py``, f02e353), one round:
for every batch of the poisoned training set (``batch_size`` 512, the notebook's; BackdoorBench's
config runs 256; shuffled, no augmentation):
1. a random batch of the clean base set (1,000 images): one Adam step (1e-4) on a fresh model,
   minimising the mean over the batch of the variance of its logits across classes;
2. a new MLP (hidden 128, two hidden layers, sigmoid output) learns for ``mlp_steps`` (100)
   steps, each two Adam steps (1e-4): MSE to 1 on the poisoned batch's features, to 0 on the
   clean batch's; the features are the backdoored model's (the layer the head reads), in train
   mode and never trained (see the departures);
3. the poisoned batch's MLP outputs give each sample an adjusted outlyingness (the
   medcouple-skewed boxplot, ``benchmark.robust``); those above ``ao_threshold`` (2) get one
   Adam step (1e-4, its own optimiser) of gradient *ascent* on their cross-entropy, unless at most
   one is selected (BackdoorBench's guard; the notebook has none).
Then every training sample's cross-entropy under the fresh model (eval mode) is its score; a
one-component Gaussian fitted to the scores at or below the median gives mu and sigma, and a
sample is flagged when its score is at least sigma sqrt(-2 ln(eps) sigma sqrt(2 pi)) + mu,
eps 1e-6 (the reference's ``get_t``; scikit-learn's GaussianMixture adds 1e-6 to the variance,
as here).

Departures, each declared:
- the clean base set is the defense context's trusted clean samples, ``per_class`` (100) of each
  class: 1,000 on CIFAR-10 (the original takes 1,000 test images, BackdoorBench 2% of the clean
  training set); held-out training images where the cell has them, else ground-truth-clean
  training rows, which then, as the original's test images, are not part of the poisoned set
  its batches and its threshold read (``inspected_rows``), and are left out of TPR/FPR;
- the features are the pooled ones the head reads, as BackdoorBench's port takes them (its
  PreAct-ResNet's children up to the head); the original notebook takes ResNet-18's children up
  to the head without the pooling (8,192 values of layer 4, and without the stem's ReLU, which
  its ResNet applies in ``forward``);
- the scores are taken in eval mode, as BackdoorBench's port takes them; the notebook scores the
  poisoned set with the fresh model still in train mode (its BatchNorm statistics moving with
  each batch) before switching to eval mode;
- the reference computes the features of both batches afresh at each of the 100 MLP steps;
  with no dropout in the model they are the same tensors every time, so here they are computed
  once per batch (BatchNorm in train mode reads the batch, as there).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models import embed
from benchmark.robust import adjusted_outlyingness
from benchmark.validate import at_least, within
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
class AssetParams(DefenseParams):
    per_class: int = field(default=100, metadata=at_least(1))  # trusted clean images per class
    rounds: int = field(default=1, metadata=at_least(1))  # passes over the poisoned set
    batch_size: int = field(default=512, metadata=at_least(2))
    lr: float = 1e-4  # Adam, the model's two optimisers
    mlp_steps: int = field(default=100, metadata=at_least(1))
    mlp_hidden: int = field(default=128, metadata=at_least(1))
    mlp_layers: int = field(default=2, metadata=at_least(1))
    mlp_lr: float = 1e-4
    ao_threshold: float = 2.0  # adjusted outlyingness above which a sample's loss is pushed up
    eps: float = field(default=1e-6, metadata=within(0, 1))  # the threshold's tail probability


def mlp(inputs: int, hidden: int, layers: int) -> nn.Module:
    """The offset network: ``layers`` hidden Linear + ReLU of width ``hidden``, a sigmoid output."""
    parts: list[nn.Module] = []
    for i in range(layers):
        parts += [nn.Linear(inputs if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*parts, nn.Linear(hidden, 1), nn.Sigmoid())


def tail_threshold(scores: torch.Tensor, eps: float) -> float:
    """The reference's ``get_t``: a Gaussian (mu, sigma) fitted to the scores at or below their
    lower median (variance + 1e-6, as scikit-learn's one-component mixture), then
    sigma sqrt(-2 ln(eps) sigma sqrt(2 pi)) + mu."""
    s = scores.detach().double().flatten()
    half = s.sort().values[(len(s) - 1) // 2]
    low = s[s <= half]
    mu = low.mean()
    sigma = math.sqrt(float(((low - mu) ** 2).mean()) + 1e-6)
    return sigma * math.sqrt(-2 * math.log(eps) * sigma * math.sqrt(2 * math.pi)) + float(mu)


@register_defense
class Asset(TrustedSamples, Defense):
    name = "asset"
    title = "ASSET (loss offset between clean data and the poisoned set)"
    Params = AssetParams
    is_detector = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: AssetParams = self.params
        clean = self.trusted(ctx)
        backdoored, _, reused = ctx.backdoored_model()
        tr = ctx.trainer
        extractor = tr.prepare_model(copy.deepcopy(backdoored)).train()
        with torch.random.fork_rng(devices=[]):  # the fresh model's and the MLPs' initialisation
            torch.manual_seed(ctx.seed)
            model, selected = self.offset_training(ctx, extractor, p)
        losses = tr.per_sample_loss(model, ctx.train.images, ctx.train.labels)
        threshold = tail_threshold(losses[inspected_rows(ctx)], p.eps)
        info = {"inspected_model": "reused from cache" if reused else "trained", "threshold": threshold,
                "n_trusted": len(clean), "trusted_source": ctx.trusted_source,
                "batches": len(selected), "mean_selected_per_batch": sum(selected) / max(1, len(selected))}
        return DefenseResult(model=backdoored, isolated=losses >= threshold, scores=losses, info=info,
                             excluded=trusted_excluded(ctx))

    def offset_training(self, ctx: DefenseContext, extractor: nn.Module, p: AssetParams
                        ) -> tuple[nn.Module, list[int]]:
        """The fresh model after ``rounds`` passes of steps 1-3, and how many samples each
        batch pushed up."""
        tr = ctx.trainer
        model = tr.prepare_model(ctx.make_model()).train()
        minimise = torch.optim.Adam(model.parameters(), lr=p.lr)
        ascend = torch.optim.Adam(model.parameters(), lr=p.lr)
        g = torch.Generator().manual_seed(ctx.seed)
        inspected, clean = inspected_rows(ctx), ctx.trusted
        n = len(inspected)
        steps = -(-n // p.batch_size)
        tr.note_work("ASSET offset", p.rounds, n, steps, p.batch_size)
        selected: list[int] = []
        for _ in tr.loops.indices(p.rounds):
            order = inspected[torch.randperm(n, generator=g)]
            for b in tr.loops.indices(steps):
                rows = order[b * p.batch_size:(b + 1) * p.batch_size][:tr.loops.batch(p.batch_size)]
                pick = torch.randperm(len(clean), generator=g)[:tr.loops.batch(p.batch_size)]
                x = tr.normalize(tr.to_device(ctx.train.images[rows]))
                y = tr.to_device(ctx.train.labels[rows])
                x_clean = tr.normalize(tr.to_device(clean.images[pick]))
                loss = model(x_clean).float().var(dim=1).mean()
                minimise.zero_grad()
                loss.backward()
                minimise.step()
                with torch.no_grad():
                    f_pos, f_neg = embed(extractor, x).float(), embed(extractor, x_clean).float()
                scores = self.offset_scores(f_pos, f_neg, p)
                chosen = (adjusted_outlyingness(scores) > p.ao_threshold).nonzero().flatten()
                selected.append(len(chosen))
                if len(chosen) <= 1:
                    continue
                ascent = -F.cross_entropy(model(x[chosen.to(x.device)]).float(), y[chosen.to(y.device)])
                ascend.zero_grad()
                ascent.backward()
                ascend.step()
        return model, selected

    def offset_scores(self, f_pos: torch.Tensor, f_neg: torch.Tensor, p: AssetParams) -> torch.Tensor:
        """A new MLP trained to output 1 on the poisoned batch's features and 0 on the clean
        batch's; its outputs on the poisoned batch (CPU)."""
        net = mlp(f_pos.shape[1], p.mlp_hidden, p.mlp_layers).to(f_pos.device)
        up = torch.optim.Adam(net.parameters(), lr=p.mlp_lr)  # two optimisers, as the reference
        down = torch.optim.Adam(net.parameters(), lr=p.mlp_lr)
        ones = torch.ones(len(f_pos), device=f_pos.device)
        zeros = torch.zeros(len(f_neg), device=f_neg.device)
        for _ in range(p.mlp_steps):
            for opt, feats, goal in ((up, f_pos, ones), (down, f_neg, zeros)):
                loss = F.mse_loss(net(feats).view(-1), goal)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            return net(f_pos).view(-1).cpu()
