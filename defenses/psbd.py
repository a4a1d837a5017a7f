"""PSBD (Li et al., CVPR 2025): prediction shift under MC-dropout, a detector on the backdoored
model (the cached No Defense model; it trains nothing).

Dropout switched on at inference shifts a benign sample's prediction away from its class more
than a poisoned one's: the trigger's features survive it. Algorithm, as WL-619/PSBD
``detection/psbd.py`` (7c58a88) runs it:
1. dropout after every residual block's sum (``models/resnet_drop.py``: ``nn.Dropout`` between
   the residual add and the block's final ReLU, in each of ResNet-18's 8 blocks; no dropout
   before the head); the model otherwise in eval mode (BatchNorm's running statistics);
2. PSU(x) = p(y^ | x) - mean over ``passes`` (3) dropout passes of p_drop(y^ | x), y^ the label
   predicted without dropout: poisoned samples have a low PSU;
3. the dropout rate: for p in 0.1, ..., 0.9 the shift ratio (the share of dropout passes whose
   argmax leaves y^) on the benign validation set and on the whole training set; among the p
   whose validation ratio is at least ``min_val_shift`` (0.8), the one that maximises validation
   ratio minus training ratio, else that maximum over every p;
4. flagged: PSU below the ``quantile`` (0.25) of the validation set's PSU, at the chosen p.

Notes and departures:
- dropout here is applied to the block's output, after its ReLU: ReLU(dropout(x)) equals
  dropout(ReLU(x)) mask for mask (dropout zeroes and scales by a positive factor), so this is
  the reference's placement exactly, on any residual block (``models.residual_blocks``);
- the reference reseeds (seed 42) before every PSU computation, so every call draws the same
  masks; here each call draws from a generator seeded by the cell's seed, likewise;
- the reference's validation set is 5% of the training set's size drawn from the test split
  (2,500 CIFAR-10 images); here it is the defense context's trusted clean samples, ``per_class``
  (250) of each class, 2,500 on CIFAR-10: held-out training images where the cell has them,
  else ground-truth-clean training rows (left out of TPR/FPR), never test images;
- the reference rebuilds the chosen p from the first qualifying p plus an index, which assumes
  the qualifying rates are contiguous; here the argmax is taken over the qualifying rates
  themselves (the same p whenever they are contiguous);
- the reference defines dropout for its ResNet's basic blocks only; here every residual block
  gets it (bottleneck and pre-activation blocks too);
- the reference inspects its backdoored model's epoch-95 checkpoint (of 100); the suite inspects
  the shared backdoored model at the end of its training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.models import architecture, residual_blocks
from benchmark.registry import UsageError
from benchmark.train import Trainer
from benchmark.validate import at_least, within
from defenses.base import (
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    TrustedSamples,
    register_defense,
    trusted_excluded,
)


@dataclass
class PsbdParams(DefenseParams):
    rates: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)])
    passes: int = 3  # dropout forward passes per sample
    min_val_shift: float = field(default=0.8, metadata=within(0, 1))  # rates the choice considers
    quantile: float = field(default=0.25, metadata=within(0, 1))  # of validation PSU: the threshold
    per_class: int = field(default=250, metadata=at_least(1))  # trusted clean images per class

    def __post_init__(self) -> None:
        bad = [r for r in self.rates if not 0 < r < 1]
        if bad or not self.rates:
            raise UsageError(f"psbd.rates must be dropout rates strictly between 0 and 1, got {self.rates}")


@contextmanager
def block_dropout(model: nn.Module, p: float, generator: torch.Generator) -> Iterator[None]:
    """Dropout with rate ``p`` on every residual block's output while the context is open,
    whatever the model's mode; masks drawn from ``generator`` (on the model's device)."""
    def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        keep = torch.empty(out.shape, device=out.device).bernoulli_(1 - p, generator=generator)
        return out * keep.to(out.dtype) / (1 - p)

    handles = [m.register_forward_hook(hook) for m in residual_blocks(model).values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Shift:
    """One dropout rate's reading of a set: per-sample PSU and the share of shifted passes."""

    psu: torch.Tensor
    ratio: float


def prediction_shift(trainer: Trainer, model: nn.Module, images: torch.Tensor, probs: torch.Tensor,
                     p: float, passes: int, seed: int) -> Shift:
    """PSU of every uint8 image at dropout rate ``p`` and the set's shift ratio (CPU); ``probs``:
    the images' softmax without dropout (the same at every rate: computed once by the caller)."""
    model = trainer.prepare_model(model)
    predicted = probs.argmax(1, keepdim=True)
    generator = torch.Generator(device=trainer.device).manual_seed(seed)
    dropped, shifted = torch.zeros(len(images)), 0.0
    with block_dropout(model, p, generator):
        for _ in range(passes):
            out = trainer.logits(model, images).softmax(1)
            dropped += out.gather(1, predicted).squeeze(1)
            shifted += float((out.argmax(1, keepdim=True) != predicted).float().mean())
    return Shift(psu=probs.gather(1, predicted).squeeze(1) - dropped / passes,
                 ratio=shifted / passes)


def choose_rate(val_ratio: dict[float, float], train_ratio: dict[float, float],
                min_val_shift: float) -> float:
    """The rate maximising validation minus training shift ratio, among those whose validation
    ratio reaches ``min_val_shift`` (all rates where none does); ties go to the lower rate."""
    rates = [r for r in val_ratio if val_ratio[r] >= min_val_shift] or list(val_ratio)
    return max(rates, key=lambda r: (val_ratio[r] - train_ratio[r], -r))


@register_defense
class Psbd(TrustedSamples, Defense):
    name = "psbd"
    title = "PSBD (prediction shift under MC-dropout)"
    Params = PsbdParams
    is_detector = True

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        if not residual_blocks(model):
            raise ValueError(f"PSBD drops out residual blocks' outputs; {architecture(model)} "
                             f"has no residual blocks (ResNet basic or bottleneck blocks)")

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: PsbdParams = self.params
        trusted = self.trusted(ctx)
        model, _, reused = ctx.backdoored_model()
        val: dict[float, Shift] = {}
        train: dict[float, Shift] = {}
        sets = {"val": trusted.images, "train": ctx.train.images}
        plain = {k: ctx.trainer.logits(model, x).softmax(1) for k, x in sets.items()}
        for rate in p.rates:
            val[rate] = prediction_shift(ctx.trainer, model, sets["val"], plain["val"], rate, p.passes,
                                         ctx.seed)
            train[rate] = prediction_shift(ctx.trainer, model, sets["train"], plain["train"], rate,
                                           p.passes, ctx.seed)
        chosen = choose_rate({r: s.ratio for r, s in val.items()},
                             {r: s.ratio for r, s in train.items()}, p.min_val_shift)
        threshold = float(torch.quantile(val[chosen].psu, p.quantile))
        psu = train[chosen].psu
        info = {"inspected_model": "reused from cache" if reused else "trained",
                "dropout_rate": chosen, "threshold": threshold, "n_trusted": len(trusted),
                "trusted_source": ctx.trusted_source,
                "val_shift_ratio": {str(r): s.ratio for r, s in val.items()},
                "train_shift_ratio": {str(r): s.ratio for r, s in train.items()}}
        return DefenseResult(model=model, isolated=psu < threshold, scores=-psu, info=info,
                             excluded=trusted_excluded(ctx))
