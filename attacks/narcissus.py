"""Narcissus (Zeng et al., CCS 2023): a clean-label trigger optimised to be the target class's
most telling feature, built to poison with almost nothing: 25 images (0.05%) of CIFAR-10.

As ruoxi-jia-group/Narcissus (``narcissus_function.py``, ``Narcissus.ipynb``; de128d8) builds it:
1. a surrogate model trained on out-of-distribution data with the target-class images as a class
   of their own (Tiny-ImageNet's 200 classes + the target: 200 epochs, SGD 0.1, cosine);
2. warm-up: a copy fine-tuned on the target-class images alone, labelled the target (RAdam 0.1,
   5 epochs, batch 350, crop and flip);
3. the trigger delta, an image-sized additive pattern from zero, bounded by ``eps`` (16/255) in
   L_inf: for ``rounds`` (1000) passes over the target-class images (batch 350, crop and flip
   first), the frozen warm-up model (left in train mode, as the reference leaves it) takes
   clamp(x + clamp(delta)) and RAdam (0.01) minimises its cross-entropy towards the target;
   generation stops early when a round ends with a zero gradient;
4. poisoning: 25 random target-class images get x + delta (labels unchanged); at test, every
   non-target image gets x + ``test_multiplier`` (3) x delta.
The reference's target is class 2 ("bird"); the suite's attacks target class 0 on CIFAR-10
(``--set narcissus.target=2`` for the reference's).

The reference's delta lives on images normalised to [-1, 1] (mean and std 0.5), bounded by 32/255
there: the same bound as 16/255 on [0, 1] pixels, where the suite applies it (stored as a float
artifact; a poisoned image is rounded to uint8 once). The optimiser's variable keeps the
reference's units (twice a pixel's), so that RAdam's step, about ``generation_lr`` of its
variable, moves the trigger as far as there.

Departures, each declared:
- out-of-distribution data: Tiny-ImageNet cannot be had offline, so the surrogate trains on the
  attack's training set with its true labels: the non-target classes stand in for the
  out-of-distribution classes, the target's images are the class of their own. This is the
  suite's shared clean reference model (``attacks.reference``, ``ref_epochs``; the reference's
  200 epochs by default, ``quick`` 8 as CL and Trojan, so they share it). Its data is
  in-distribution, which the threat model does not give the attacker: a stronger surrogate;
- the reference warms up and generates towards the CIFAR label (2) on a model whose pretraining
  put the target images in class 200; here the target's own class is the one the surrogate
  learned for them;
- a rate that rounds to no image poisons one (``smoke``'s 1,000 images);
- ``quick`` runs 50 generation rounds (a round at quick is ~2,000 images; 1,000 would take hours
  on a CPU); ``full`` runs the reference's 1,000.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import Attack, AttackParams, register_attack
from attacks.reference import reference_model
from benchmark.data import ImageSet
from benchmark.train import TrainConfig
from benchmark.validate import at_least


@dataclass
class NarcissusParams(AttackParams):
    rate: float = 0.0005  # 25 of CIFAR-10's 50,000
    eps: float = 16.0  # L_inf bound of the trigger, of 255
    test_multiplier: float = 3.0  # the trigger's strength at test
    ref_epochs: int = field(default=200, metadata=at_least(1))  # the surrogate's training
    warmup_epochs: int = field(default=5, metadata=at_least(0))
    warmup_lr: float = 0.1
    rounds: int = field(default=1000, metadata=at_least(1))  # passes over the target images
    generation_lr: float = 0.01
    batch_size: int = field(default=350, metadata=at_least(1))


@register_attack
class Narcissus(Attack):
    name = "narcissus"
    Params = NarcissusParams
    clean_label = True
    rate_of = "training set (all poisoned samples drawn from the target class)"

    @classmethod
    def uses_model(cls, params: AttackParams) -> bool:
        return True

    def prepare(self, train: ImageSet) -> None:
        c, h, w = train.images.shape[1:]

        def compute() -> dict:
            surrogate = reference_model(self.ctx, train, self.params.ref_epochs)
            return self.generate(surrogate, train)

        art = self.ctx.cache.get_or_create("triggers", {**self.ctx.cache_key, "phase": "narcissus-trigger",
                                                        "shape": [c, h, w]}, compute)
        self.delta = art["delta"]
        self.generation = art["info"]

    def poison_count(self, train: ImageSet) -> int:
        """``rate`` of the training set, at least one image (0.05% of a small set rounds to 0)."""
        return max(1, round(self.params.rate * len(train)))

    def warm_up(self, surrogate: nn.Module, target_images: torch.Tensor) -> nn.Module:
        """A copy of the surrogate fine-tuned on the target-class images (labelled the target)."""
        p, tr = self.params, self.ctx.trainer
        model = copy.deepcopy(surrogate)
        if p.warmup_epochs > 0:
            cfg = TrainConfig(epochs=p.warmup_epochs, batch_size=p.batch_size, optimizer="radam",
                              lr=p.warmup_lr, weight_decay=0.0, schedule="constant",
                              precision=self.ctx.precision)
            labels = torch.full((len(target_images),), p.target, dtype=torch.long)
            tr.fit(model, target_images, labels, cfg, seed=self.ctx.seed, desc="Narcissus warm-up")
        return model

    def generate(self, surrogate: nn.Module, train: ImageSet) -> dict:
        """The trigger delta (C, H, W), float in [-eps, eps] of [0, 1] pixels, and a summary."""
        p, tr = self.params, self.ctx.trainer
        target_images = train.images[train.labels == p.target]
        model = tr.prepare_model(self.warm_up(surrogate, target_images))
        model.train()  # the reference never switches it to eval: BatchNorm reads each batch
        for q in model.parameters():
            q.requires_grad_(False)
        bound = 2 * p.eps / 255  # in the reference's units: [-1, 1] images, twice a pixel's
        u = torch.zeros((1, *train.images.shape[1:]), device=tr.device, requires_grad=True)
        opt = torch.optim.RAdam([u], lr=p.generation_lr)
        y = torch.full((p.batch_size,), p.target, device=tr.device)
        g = self.generator(7)
        n = len(target_images)
        steps = -(-n // p.batch_size)
        tr.note_work("Narcissus trigger generation", p.rounds, n, steps, p.batch_size)
        losses: list[float] = []
        done = 0
        for _ in tr.loops.indices(p.rounds):
            order = torch.randperm(n, generator=g)
            for s in range(0, tr.loops.rows(n), p.batch_size):
                rows = order[s:s + p.batch_size][:tr.loops.batch(p.batch_size)]
                x = tr.augment(tr.to_device(target_images[rows]), 4, g).float() / 255
                poisoned = (x + u.clamp(-bound, bound) / 2).clamp(0, 1)
                loss = F.cross_entropy(model(tr.normalize(poisoned * 255)), y[:len(x)])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            done += 1
            if u.grad is not None and float(u.grad.abs().sum()) == 0:
                break  # the reference's early stop: the bound saturates every pixel's gradient
        out = (u.detach().clamp(-bound, bound) / 2)[0].cpu()
        return {"delta": out, "info": {"rounds_run": done, "loss_first_batch": losses[0] if losses else None,
                                       "loss_last_batch": losses[-1] if losses else None,
                                       "mean_abs_delta_255": float(out.abs().mean() * 255)}}

    def stamp(self, images: torch.Tensor, strength: float) -> torch.Tensor:
        """x + strength x delta on [0, 1] pixels, clamped, rounded to uint8; a delta made at
        another size is resized (nearest) to the images'."""
        delta = self.delta.to(images.device)
        if delta.shape[-2:] != images.shape[-2:]:
            delta = F.interpolate(delta[None], size=images.shape[-2:], mode="nearest")[0]
        out = images.float() / 255 + strength * delta
        return (out.clamp(0, 1) * 255).round().to(torch.uint8)

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.stamp(images, 1.0)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self.stamp(images, self.params.test_multiplier)

    def describe(self) -> dict:
        info = super().describe()
        if getattr(self, "generation", None):
            info["generation"] = self.generation
        return info
