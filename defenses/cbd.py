"""CBD, Causality-inspired Backdoor Defense (Zhang et al., CVPR 2023, "Backdoor Defense via
Deconfounded Representation Learning"): a defense that trains a clean model from the poisoned
set with no clean data.

1. A "backdoored" model f_B learns the poisoned set for ``bias_epochs`` (5) with plain cross
   entropy: the backdoor, a shortcut, is learned first, so f_B captures the confounding path.
2. A clean model f_C trains from scratch on the whole set. Each sample's cross entropy is
   weighted by w = CE_B / (CE_B + CE_C + 1e-8) (both detached; CE_C its own current loss),
   rescaled to sum to the batch size: samples f_B fits well (poisoned ones) weigh little.
3. With ``disentangle`` the mutual information between f_C's penultimate features z and f_B's r
   is minimised: a discriminator T scores (r, z) pairs against (r, z shifted by one in the
   batch), its score x 0.01 is added to f_C's loss (gradient through z only), and before every
   epoch T alone is trained on a full pass to maximise it (Adam lr 0.2, x0.1 every 20 epochs,
   each parameter tensor divided after every step by the reference's power-iteration estimate).
   T is concat(r, z) -> dropout 0.2 -> linear to |z| -> leaky ReLU -> dropout -> linear to 1.
The final f_C is the defended model; CBD isolates nothing (no TPR/FPR).

Reference: zaixizhang/CBD (8a7bd37), ``train.py``, ``utils/util.py``, ``config.py``: f_B at lr 0.1
(SGD, Nesterov, momentum 0.9, weight decay 1e-4), f_C for 100 epochs at 0.1, 0.01 from epoch 20,
0.001 from epoch 70, batch 64, crop, flip and Cutout(1, 3) for both models (``data_loader.py``:
one zeroed square per image, 2x2 pixels by its arithmetic; ``cutout`` 0 turns it off, as
version 1 ran); its model selector offers WideResNets (WRN-16-1 by default) and a ResNet-34, no
ResNet-18: the suite runs its grid's model. Departures: the
reference's ``--disentangle`` defaults to 0 (no MI term); the paper's method has it, so it is on
here (``--set cbd.disentangle=false`` is the code's default run). The reference's discriminator
pass runs f_C in training mode, so it moves f_C's BatchNorm statistics; so does this one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models import classifier_head, embed
from benchmark.train import Callback, TrainConfig, Trainer
from benchmark.validate import at_least
from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense


@dataclass
class CBDParams(DefenseParams):
    bias_epochs: int = field(default=5, metadata=at_least(1))
    epochs: int = field(default=100, metadata=at_least(1))
    lr: float = 0.1
    milestones: list[int] = field(default_factory=lambda: [20, 70])  # f_C's epochs at x0.1
    batch_size: int = 64
    weight_decay: float = 1e-4
    disentangle: bool = True
    mi_scale: float = 0.01  # the reference's estimator scales its score by this
    disc_lr: float = 0.2
    disc_step: int = 20  # epochs between the discriminator's x0.1 steps
    dropout: float = 0.2
    cutout: int = field(default=3, metadata=at_least(0))  # the reference's Cutout(1, 3); 0: none


class Discriminator(nn.Module):
    """The reference's T(r, z): a 2-layer MLP on the concatenated features."""

    def __init__(self, dim_r: int, dim_z: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim_r + dim_z, dim_z)
        self.out = nn.Linear(dim_z, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.hidden(self.dropout(torch.cat([r, z], 1))))
        return self.out(self.dropout(h)).squeeze(-1)

    def score(self, r: torch.Tensor, z: torch.Tensor, scale: float) -> torch.Tensor:
        """scale x (mean T(r, z) - mean T(r, z shifted by one)): the MI estimate."""
        return scale * (self(r, z).mean() - self(r, z.roll(-1, 0)).mean())

    @torch.no_grad()
    def normalise(self) -> None:
        """Divide every parameter tensor by the reference's power-iteration value (the square
        root of its estimate of the top singular value, from 5 iterations)."""
        for w in self.parameters():
            m = w if w.dim() > 1 else w.unsqueeze(-1)
            u = torch.ones(1, m.shape[1], device=m.device)
            for _ in range(5):
                v = u @ m.T
                v = v / v.norm()
                u = v @ m
                u = u / u.norm()
            w /= (u @ m.T @ v.T).sum().sqrt()


class DiscriminatorPass(Callback):
    """Before every epoch of f_C, a full pass over ``images`` that trains T alone to maximise
    the MI estimate, f_C in training mode as the reference runs it; the reference steps its
    StepLR before each epoch, so epoch e runs at lr x 0.1^((e + 1) // disc_step). T, its Adam
    state and its batch generator are the callback's state, saved with f_C's checkpoint."""

    def __init__(self, disc: Discriminator, bias: nn.Module, p: CBDParams, trainer: Trainer,
                 cfg: TrainConfig, images: torch.Tensor,
                 inputs: Callable[[torch.Tensor, torch.Generator], torch.Tensor], seed: int) -> None:
        self.disc, self.bias, self.p = disc, bias, p
        self.trainer, self.cfg, self.images, self.inputs = trainer, cfg, images, inputs
        self.optimizer = torch.optim.Adam(disc.parameters(), lr=p.disc_lr)
        self.generator = torch.Generator().manual_seed(seed)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.p.disc_lr * 0.1 ** ((epoch + 1) // self.p.disc_step)
        rows = torch.arange(len(self.images))
        for _, idx in self.trainer.numbered_batches(rows, self.cfg, self.generator, epoch):
            xn = self.inputs(self.images[self.trainer.to_device(idx)], self.generator)
            with torch.no_grad():
                z = embed(model, xn).float()
                r = embed(self.bias, xn).float()
            loss = -self.disc.score(r, z, self.p.mi_scale)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.disc.normalise()

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def weighted_ce(logits: torch.Tensor, bias_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean(w CE_C), w = CE_B / (CE_B + CE_C + 1e-8) rescaled to sum to the batch size."""
    ce = F.cross_entropy(logits, y, reduction="none")
    ce_b = F.cross_entropy(bias_logits, y, reduction="none")
    w = ce_b / (ce_b + ce.detach() + 1e-8)
    w = w * len(w) / w.sum()
    return (w * ce).mean()


@register_defense
class CBD(Defense):
    name = "cbd"
    title = "CBD (causality-inspired deconfounded training, CVPR 2023)"
    Params = CBDParams
    version = 2  # 2: both models train under the reference's Cutout(1, 3) (was crop and flip only)

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: CBDParams = self.params
        tr = ctx.trainer
        base = ctx.train_cfg.replace(batch_size=p.batch_size, lr=p.lr, momentum=0.9, nesterov=True,
                                     weight_decay=p.weight_decay, optimizer="sgd", warmup=0.0,
                                     augment=True, label_smoothing=0.0, cutout=p.cutout)
        bias_cfg = base.replace(epochs=p.bias_epochs, schedule="constant")
        key = {**ctx.cache_key, "phase": "cbd-bias", "cfg": bias_cfg.key()}
        bias, bias_curve, _ = ctx.trained_once("models", key, bias_cfg, None, "CBD backdoored model")
        bias.eval()
        for q in bias.parameters():
            q.requires_grad_(False)
        cfg = base.replace(epochs=p.epochs, schedule="step", milestones=list(p.milestones), gamma=0.1)
        model = tr.prepare_model(ctx.make_model())
        head, bias_head = classifier_head(model), classifier_head(bias)
        with torch.no_grad():
            probe = tr.normalize(tr.to_device(ctx.train.images[:2]))
            dim_r, dim_z = embed(bias, probe).shape[1], embed(model.eval(), probe).shape[1]
        disc = Discriminator(dim_r, dim_z, p.dropout).to(tr.device)

        def inputs(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return tr.normalize(tr.augment(x, cfg.crop_padding, g, cfg.crop_mode, cfg.cutout))

        disc_pass = DiscriminatorPass(disc, bias, p, tr, cfg, tr.to_device(ctx.train.images),
                                      inputs, ctx.seed + 7) if p.disentangle else None

        def step(_forward, x, y, _idx, g):  # noqa: ANN001, ANN202 - a StepFn
            xn = inputs(x, g)
            z = embed(model, xn)
            logits = head(z)
            with torch.no_grad():
                r = embed(bias, xn)
                bias_logits = bias_head(r)
            loss = weighted_ce(logits.float(), bias_logits.float(), y)
            if p.disentangle:  # T stays in training mode (dropout on), as the reference's
                loss = loss + disc.score(r.float(), z.float(), p.mi_scale)
            return loss, logits

        curve = tr.fit(model, ctx.train.images, ctx.train.labels, cfg, step=step, seed=ctx.seed,
                       callbacks=[disc_pass, ctx.monitor],
                       desc="CBD clean model", checkpoint=ctx.checkpoint("clean"))
        return DefenseResult(model=model, curves={"bias": bias_curve, "train": curve},
                             info={"disentangle": p.disentangle})
