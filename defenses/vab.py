"""VaB, the Victim and the Beneficiary (Zhu et al., ICCV 2023): a training-time defense in the
family of PIPD, ABL, DBD and ASD. A "victim" model learns the poisoned samples it suspects and so
keeps the backdoor; a "beneficiary" learns the credible rest with AttentionMix and, later, the
suspects as unlabelled data whose targets the victim's beliefs are subtracted from.

As Zixuan-Zhu/VaB runs it on CIFAR-10 (``Train_cifar10.py``, ``attention_mix_cifar10.py``,
``functions_cifar10.py``, ``dataloader_cifar10.py``; 8a70c11):
- the victim (Adam 0.001, weight decay 5e-4, batch 128, no augmentation) trains one epoch on the
  whole set, then ``warmup`` - 1 (2) epochs on its suspects; its split: each sample's entropy
  over classes (mean of -p log p, NaN as 0), smoothed across calls (``r`` 0.75 of the new),
  min-max normalised; credible above the threshold, max(1 - 0.4 e, 0.2) in warm-up epoch e and
  the last warm-up epoch's from then on (0.2 with the 3 warm-up epochs), suspect otherwise;
- the beneficiary (SGD 0.1, momentum 0.9, weight decay 5e-4, steps x0.1 at epochs 50, 100, 150;
  ``epochs`` 200; batch 128) trains each epoch on the credible samples, two crop-and-flip views
  each, mixed by AttentionMix: the attention map is the sum over channels of the squared
  last-stage features (the beneficiary's own, no gradient, train mode), upsampled to the image
  and min-max normalised; where a sample's map reaches 0.1 it takes W / (W + Wc) of itself and
  Wc / (W + Wc) of a random partner (W, Wc: the share of each map's mass in that region), its
  soft label 1 - W Wc / (W + Wc) its own and W Wc / (W + Wc) the partner's; soft cross-entropy;
- after epoch ``semi_start`` (100) each beneficiary step also takes a batch of the suspects as
  unlabelled data (sized to spread them over the epoch's steps): their target is the
  beneficiary's hardened mean prediction over two views minus the victim's softmax at
  temperature 3 on the plain image, clipped to [0, 1]; the labelled targets lose the victim's
  softmax likewise; loss L_mix + lambda L_u, lambda ``alpha1`` (0.1) to epoch 150, ``alpha2``
  (0.5) after;
- the victim trains one more epoch on the suspects and the split is recomputed after every
  fifth beneficiary epoch up to epoch 100, after every epoch from then on.
The defended model is the beneficiary after the last epoch; the isolation is the last split's
suspects.

Departures, each declared:
- the reference keeps the beneficiary checkpoint with the best clean *test* accuracy; the
  suite takes the last epoch's (a defense never sees the test set);
- the reference wraps the beneficiary with a new pooling and linear head on its feature maps;
  the suite's ResNet-18 is that network already;
- the attention reads the last stage (``layer<k>``, the highest k): models without named stages,
  or whose last stage maps a 32 px image to one position (VGG's ends in a max-pool), are refused;
- the victim is the cell's model, as the beneficiary; the reference's victim is always a
  full-width ResNet-18, whatever the beneficiary (the two agree at the default model);
- both models' training steps run in the cell's ``train.precision`` (bf16 autocast on CUDA
  under ``auto``), as every defense's; the reference trains fp32;
- the first epoch's warm-up and every victim epoch draw their own order (the reference's
  loaders shuffle too), and the labelled batches of a semi-supervised epoch cycle through one
  shuffled order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models import architecture
from benchmark.progress import Phase
from benchmark.train import LoopCheckpoint
from benchmark.validate import at_least, within
from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense


@dataclass
class VaBParams(DefenseParams):
    epochs: int = field(default=200, metadata=at_least(1))
    batch_size: int = 128
    lr: float = 0.1
    milestones: list[int] = field(default_factory=lambda: [50, 100, 150])
    victim_lr: float = 0.001
    warmup: int = field(default=3, metadata=at_least(1))
    r: float = field(default=0.75, metadata=within(0, 1))  # the new entropy's share in the smoothing
    threshold: float = 0.2  # the floor of the split's threshold on the normalised entropy
    attention_threshold: float = 0.1
    semi_start: int = 100  # epochs after this one add the suspects as unlabelled data
    split_every: int = 5  # beneficiary epochs between re-splits up to ``semi_start``
    alpha1: float = 0.1
    alpha2: float = 0.5
    alpha_switch: int = 150
    temperature: float = 3.0


def last_stage(model: nn.Module) -> nn.Module:
    """The model's last named stage ``layer<k>`` (the highest k)."""
    stages = [m for k in range(1, 10) if (m := getattr(model, f"layer{k}", None)) is not None]
    if not stages:
        raise ValueError(f"VaB's AttentionMix reads the last stage layer<k>; {architecture(model)} "
                         f"names no stages")
    return stages[-1]


@torch.no_grad()
def check_attention(model: nn.Module, size: int = 32) -> None:
    """Refuse a model whose last stage maps a ``size`` px image to a single position (VGG's
    layer5 ends in a max-pool): its attention would be flat and AttentionMix would mix nothing."""
    caught: list[torch.Tensor] = []
    handle = last_stage(model).register_forward_hook(lambda _m, _i, out: caught.append(out))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was_training)
    if caught[0].shape[-2:].numel() < 2:
        raise ValueError(f"VaB's AttentionMix needs a last stage with a feature map; "
                         f"{architecture(model)}'s is 1x1 at {size} px")


def attention_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The beneficiary's attention (N, 1, H, W): channel sum of the squared last-stage features,
    upsampled (nearest) to the image and min-max normalised per sample; no gradient."""
    caught: list[torch.Tensor] = []
    handle = last_stage(model).register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    att = F.interpolate(caught[0].float().pow(2).sum(1, keepdim=True), size=x.shape[-2:])
    low = att.amin(dim=(2, 3), keepdim=True)
    return (att - low) / (att.amax(dim=(2, 3), keepdim=True) - low + 1e-12)


def attention_mix(x: torch.Tensor, att: torch.Tensor, targets: torch.Tensor, threshold: float,
                  perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AttentionMix of a batch with its permutation ``perm``: (mixed images, soft labels)."""
    mask = (att >= threshold).float()
    w = (att * mask).sum((1, 2, 3), keepdim=True) / (att.sum((1, 2, 3), keepdim=True) + 1e-12)
    wc = (att[perm] * mask).sum((1, 2, 3), keepdim=True) / (att[perm].sum((1, 2, 3), keepdim=True) + 1e-12)
    own = w / (w + wc + 1e-12)
    mixed = x * (1 - mask) + own * mask * x + (1 - own) * mask * x[perm]
    # the reference's (1 - W) + W^2 / (W + Wc) of its own label, W Wc / (W + Wc) of the partner's
    share = (w * wc / (w + wc + 1e-12))[:, :, 0, 0]
    return mixed, (1 - share) * targets + share * targets[perm]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(F.log_softmax(logits.float(), 1) * targets).sum(1).mean()


@register_defense
class VaB(Defense):
    name = "vab"
    title = "VaB (the victim and the beneficiary)"
    Params = VaBParams
    version = 1

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        check_attention(model)

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: VaBParams = self.params
        tr, n = ctx.trainer, len(ctx.train)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            victim, beneficiary = tr.prepare_model(ctx.make_model()), tr.prepare_model(ctx.make_model())
        v_opt = torch.optim.Adam(victim.parameters(), lr=p.victim_lr, weight_decay=5e-4)
        b_opt = torch.optim.SGD(beneficiary.parameters(), lr=p.lr, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(ctx.seed)
        state: dict = {"smoothed": None, "victim_images": 0}
        precision = tr.training_precision(ctx.train_cfg)  # both models' training steps
        tr.note_work("VaB beneficiary", p.epochs, n, -(-n // p.batch_size), p.batch_size)
        phase = Phase("VaB beneficiary", p.epochs, -(-n // p.batch_size))
        loop = LoopCheckpoint(ctx.checkpoint("vab"), tr, phase, g,
                              {"params": repr(p), "n": n, "precision": precision},
                              victim=victim, beneficiary=beneficiary, victim_opt=v_opt, opt=b_opt)
        saved = loop.resume()  # an interrupted run's epochs, with everything they carry forward
        threshold = max(1 - 0.4 * (p.warmup - 1), p.threshold)  # the last warm-up epoch's, kept
        if saved is None:
            credible = self.warm_up(ctx, victim, v_opt, g, state, threshold, precision)
            curve, splits, done = [], [], 0
        else:
            state.update(saved["state"])
            credible, splits = saved["credible"], saved["splits"]
            curve, done = saved["curve"], saved["epochs_done"]
            if splits:  # the harness's view of the last split, as the interrupted run left it
                ctx.note_split(~credible)
        for epoch in tr.loops.indices(p.epochs):
            if epoch < done:
                continue
            epoch += 1  # the reference counts from 1
            t0 = time.perf_counter()
            for group in b_opt.param_groups:
                group["lr"] = p.lr * 0.1 ** sum(epoch - 1 >= m for m in p.milestones)
            lam = p.alpha1 if epoch <= p.alpha_switch else p.alpha2
            semi = epoch > p.semi_start and (~credible).any()
            loss = self.beneficiary_epoch(ctx, beneficiary, victim if semi else None, b_opt, credible,
                                          lam, g, precision, lambda b, e=epoch: phase.step(e, b))
            point = {"epoch": epoch, "train_loss": loss, "credible": int(credible.sum())}
            if epoch % p.split_every == 0 or epoch > p.semi_start:
                self.train_victim(ctx, victim, v_opt, (~credible).nonzero().flatten(), g, state,
                                  precision)
                credible = self.split(ctx, victim, threshold, state)
                ctx.note_split(~credible)
                splits.append(epoch)
            point["seconds"] = time.perf_counter() - t0
            if ctx.monitor is not None:
                t_cb = time.perf_counter()
                point.update(ctx.monitor.on_epoch_end(epoch, beneficiary) or {})
                point["callback_s"] = time.perf_counter() - t_cb
            curve.append(point)
            phase.epoch_done(epoch, point)
            loop.epoch_done(epoch, epoch == p.epochs, curve, credible=credible, splits=splits, state=state)
        tr.note_work("VaB victim", 1, state["victim_images"], -(-state["victim_images"] // p.batch_size),
                     p.batch_size)
        return DefenseResult(model=beneficiary, isolated=~credible, curves={"beneficiary": curve},
                             info={"splits_at": splits, "suspects": int((~credible).sum())})

    def warm_up(self, ctx: DefenseContext, victim: nn.Module, opt: torch.optim.Optimizer,
                g: torch.Generator, state: dict, threshold: float, precision: str) -> torch.Tensor:
        """The victim's warm-up: an epoch on every sample, then ``warmup`` - 1 epochs on its
        suspects at a falling threshold; returns the first credible samples, split at
        ``threshold``."""
        p, n = self.params, len(ctx.train)
        self.train_victim(ctx, victim, opt, torch.arange(n), g, state, precision)
        for e in range(1, p.warmup):
            credible = self.split(ctx, victim, max(1 - 0.4 * e, p.threshold), state)
            self.train_victim(ctx, victim, opt, (~credible).nonzero().flatten(), g, state, precision)
        return self.split(ctx, victim, threshold, state)

    def train_victim(self, ctx: DefenseContext, victim: nn.Module, opt: torch.optim.Optimizer,
                     rows: torch.Tensor, g: torch.Generator, state: dict, precision: str) -> None:
        """One epoch of plain cross-entropy on ``rows`` (no augmentation), its steps in
        ``precision``."""
        p, tr = self.params, ctx.trainer
        victim.train()
        order = rows[torch.randperm(len(rows), generator=g)]
        state["victim_images"] += len(rows)
        for s in range(0, tr.loops.rows(len(order)), p.batch_size):
            idx = order[s:s + p.batch_size][:tr.loops.batch(p.batch_size)]
            if len(idx) < 2:  # BatchNorm needs two
                continue
            x = tr.normalize(tr.to_device(ctx.train.images[idx]))
            with tr.autocast(precision):
                loss = F.cross_entropy(victim(x).float(), tr.to_device(ctx.train.labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def split(self, ctx: DefenseContext, victim: nn.Module, threshold: float, state: dict) -> torch.Tensor:
        """Credible samples: the victim's smoothed, normalised entropy above ``threshold``."""
        probs = ctx.trainer.logits(victim, ctx.train.images).softmax(1)
        score = -(probs * probs.log()).mean(1).nan_to_num(0.0)
        if state["smoothed"] is not None:
            score = self.params.r * score + (1 - self.params.r) * state["smoothed"]
        state["smoothed"] = score
        low, high = score.min(), score.max()
        return (score - low) / (high - low).clamp(min=1e-12) > threshold

    def beneficiary_epoch(self, ctx: DefenseContext, model: nn.Module, victim: nn.Module | None,
                          opt: torch.optim.Optimizer, credible: torch.Tensor, lam: float,
                          g: torch.Generator, precision: str,
                          on_step: Callable[[int], None] = lambda _b: None) -> float:
        """One pass over the credible samples with AttentionMix, its steps in ``precision``; with
        ``victim``, each step also takes a share of the suspects as unlabelled data. ``on_step``
        hears each step (1-based)."""
        p, tr, train = self.params, ctx.trainer, ctx.train
        classes = ctx.num_classes
        labelled = credible.nonzero().flatten()
        labelled = labelled[torch.randperm(len(labelled), generator=g)]
        steps = len(labelled) // p.batch_size + 1
        suspects = (~credible).nonzero().flatten()
        suspects = suspects[torch.randperm(len(suspects), generator=g)]
        u_batch = max(1, len(suspects) // steps)
        model.train()
        if victim is not None:
            victim.eval()
        total, count = 0.0, 0
        for b in tr.loops.indices(steps):
            idx = labelled[(b * p.batch_size) % len(labelled):][:tr.loops.batch(p.batch_size)]
            if len(idx) < 2:
                continue
            on_step(b + 1)
            raw = tr.to_device(train.images[idx])
            views = torch.cat([tr.augment(raw, 4, g), tr.augment(raw, 4, g)])
            x = tr.normalize(views)
            y = F.one_hot(tr.to_device(train.labels[idx]), classes).float().repeat(2, 1)
            with tr.autocast(precision):  # the forward passes; the step outside
                loss_u = None
                if victim is not None:
                    with torch.no_grad():
                        belief_x = (victim(tr.normalize(raw)).float() / p.temperature).softmax(1)
                        y = (y - belief_x.repeat(2, 1)).clamp(0, 1)
                    u_idx = suspects[(b * u_batch) % len(suspects):][:tr.loops.batch(u_batch)]
                    u_raw = tr.to_device(train.images[u_idx])
                    u1, u2 = tr.normalize(tr.augment(u_raw, 4, g)), tr.normalize(tr.augment(u_raw, 4, g))
                    with torch.no_grad():
                        mean = (model(u1).float().softmax(1) + model(u2).float().softmax(1)) / 2
                        hard = (mean == mean.max(1, keepdim=True).values).float()
                        hard = hard / hard.sum(1, keepdim=True)
                        belief = (victim(tr.normalize(u_raw)).float() / p.temperature).softmax(1)
                        target_u = (hard - belief).clamp(0, 1).repeat(2, 1)
                    loss_u = soft_cross_entropy(torch.cat([model(u1), model(u2)]), target_u)
                att = torch.cat([attention_maps(model, x[:len(idx)]), attention_maps(model, x[len(idx):])])
                perm = torch.randperm(len(x), generator=g).to(x.device)
                mixed, targets = attention_mix(x, att, y, p.attention_threshold, perm)
                k = len(idx)
                loss = soft_cross_entropy(torch.cat([model(mixed[:k]), model(mixed[k:])]), targets)
                if loss_u is not None:
                    loss = loss + lam * loss_u
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()), count + 1
        return total / max(count, 1)
