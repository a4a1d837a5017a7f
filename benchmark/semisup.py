"""MixMatch (Berthelot et al. 2019) as DBD and ASD use it, written once.

Per step: a labelled batch (one weak augmentation, its observed label) and an unlabelled batch
of the same size (``K`` weak augmentations); the unlabelled targets are the views' mean softmax
sharpened with temperature ``T``; every input and target is mixed with a random partner
(lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda)); the loss is the soft
cross-entropy of the labelled part plus ``lambda_u`` (ramped linearly over ``rampup`` epochs)
times the mean squared error of the unlabelled part's softmax.

The reference interleaves labelled and unlabelled samples over three forward passes so that
every BatchNorm batch holds both; here the whole mixed batch is one forward pass, whose
BatchNorm statistics also cover both (the documented equivalent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.train import CROP_MODES, Callback, Trainer
from benchmark.validate import one_of


@dataclass
class MixMatchParams:
    k: int = 2  # augmentations of each unlabelled image
    temperature: float = 0.5  # sharpening
    alpha: float = 0.75  # Beta(alpha, alpha) of mixup
    lambda_u: float = 15.0  # weight of the unlabelled loss, after the ramp
    rampup: float = 190.0  # epochs over which that weight ramps up linearly from 0


@dataclass
class SemiSupervisedOptions:
    """The options DBD and ASD share: the SCE that ranks samples and MixMatch's settings."""

    sce_alpha: float = 0.1
    sce_beta: float = 1.0
    mixmatch_k: int = 2
    mixmatch_t: float = 0.5
    mixmatch_alpha: float = 0.75
    lambda_u: float = 15.0
    # weak augmentation's crop padding: both references reflect
    crop_mode: str = field(default="reflect", metadata=one_of(*CROP_MODES))

    def mixmatch(self, rampup: float) -> MixMatchParams:
        return MixMatchParams(self.mixmatch_k, self.mixmatch_t, self.mixmatch_alpha, self.lambda_u,
                              rampup)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    q = p ** (1.0 / temperature)
    return q / q.sum(1, keepdim=True)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Every sample mixed with a random partner of the batch, lambda' = max(lambda, 1 - lambda)
    (so each mix stays closer to its own sample); returns (x, y, lambda')."""
    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen))).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam


def mixmatch_loss(logits_x: torch.Tensor, targets_x: torch.Tensor, logits_u: torch.Tensor,
                  targets_u: torch.Tensor, weight: float) -> torch.Tensor:
    lx = -(targets_x * F.log_softmax(logits_x, 1)).sum(1).mean()
    lu = ((logits_u.softmax(1) - targets_u) ** 2).mean()
    return lx + weight * lu


class MixMatch(Callback):
    """A trainer ``StepFn``: ``trainer.fit(model, images, labels, cfg, indices=labelled,
    step=mixmatch, callbacks=[mixmatch, ...])`` with ``cfg.steps_per_epoch`` the iterations per
    epoch; the unlabelled rows are set with ``set_unlabelled`` (again whenever a scheme
    re-splits). As a callback it hooks no epoch; it carries its ramp's step count and its
    unlabelled queue across epochs, saved with the fit's checkpoint."""

    def __init__(self, trainer: Trainer, images: torch.Tensor, num_classes: int,
                 params: MixMatchParams, steps_per_epoch: int, epoch_offset: float = 0.0,
                 crop_padding: int = 4, crop_mode: str = "zeros") -> None:
        self.trainer, self.images, self.num_classes = trainer, images, num_classes
        self.p, self.steps_per_epoch, self.offset = params, steps_per_epoch, epoch_offset
        self.crop_padding, self.crop_mode = crop_padding, crop_mode
        self.done = 0  # steps taken, for the ramp
        self.set_unlabelled(torch.zeros(0, dtype=torch.long))

    def set_unlabelled(self, rows: torch.Tensor) -> None:
        self.unlabelled, self._queue = rows.cpu(), torch.zeros(0, dtype=torch.long)

    def state_dict(self) -> dict:
        return {"done": self.done, "unlabelled": self.unlabelled, "queue": self._queue}

    def load_state_dict(self, state: dict) -> None:
        self.done, self.unlabelled, self._queue = state["done"], state["unlabelled"], state["queue"]

    def weight(self) -> float:
        progress = (self.offset + self.done / self.steps_per_epoch) / max(self.p.rampup, 1e-8)
        return self.p.lambda_u * min(max(progress, 0.0), 1.0)

    def _unlabelled_batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if len(self._queue) < n:
            self._queue = torch.cat([self._queue,
                                     self.unlabelled[torch.randperm(len(self.unlabelled), generator=gen)]])
        rows, self._queue = self._queue[:n], self._queue[n:]
        return rows

    def __call__(self, forward, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,  # noqa: ANN001
                 gen: torch.Generator) -> tuple[torch.Tensor, None]:
        tr = self.trainer

        def weak(im: torch.Tensor) -> torch.Tensor:
            return tr.normalize(tr.augment(im, self.crop_padding, gen, self.crop_mode))

        xl = weak(x)
        targets_x = F.one_hot(y, self.num_classes).float()
        # steps taken, this one included (a development run skips steps: the trainer's index)
        self.done = self.done + 1 if tr.loops.dev is None else tr.step_index + 1
        if len(self.unlabelled) == 0:  # nothing unlabelled: the soft cross-entropy alone
            return -(targets_x * F.log_softmax(forward(xl).float(), 1)).sum(1).mean(), None
        xu = tr.to_device(self.images[self._unlabelled_batch(len(rows), gen)])
        views = [weak(xu) for _ in range(self.p.k)]
        with torch.no_grad():  # label guessing, in train mode as the reference
            guess = torch.stack([forward(v).float().softmax(1) for v in views]).mean(0)
            targets_u = sharpen(guess, self.p.temperature)
        inputs = torch.cat([xl, *views])
        targets = torch.cat([targets_x, targets_u.repeat(self.p.k, 1)])
        mixed_x, mixed_y, _ = mixup(inputs, targets, self.p.alpha, gen)
        logits = forward(mixed_x).float()
        b = len(xl)
        return mixmatch_loss(logits[:b], mixed_y[:b], logits[b:], mixed_y[b:], self.weight()), None
