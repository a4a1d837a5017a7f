"""IBD-PSC (Hou et al., ICML 2024): parameter-oriented scaling consistency, a detector on the
backdoored model (the cached No Defense model; it trains nothing).

Scaling the BatchNorm layers' weight and bias amplifies what the model has learned; a poisoned
input's prediction survives the amplification, a benign input's confidence falls. Algorithm,
as BackdoorBox's ``core/defenses/IBD_PSC.py`` (d3cf184) and backdoor-toolbox's
``other_defenses_tool_box/IBD_PSC.py`` run it (the two agree on everything below):
1. the model's BatchNorm2d layers in registration order, counted from the last (L of them);
   "scaling k layers" multiplies weight and bias of the last k by ``scale`` (1.5) in a copy of
   the model, running statistics untouched, eval mode;
2. the start depth k*: the first k in 1..L-1 whose error rate on benign labelled validation
   images exceeds ``xi`` (0.6, strictly);
3. ``n`` (5) scaled models scale the last k*+1, ..., k*+n layers (capped at L): each goes one
   layer deeper towards the input;
4. PSC(x) = the mean over the n models of the softmax probability of the label the unscaled
   model predicts for x; x is flagged when PSC >= ``threshold`` (0.9).

Departures, each declared:
- the references detect test inputs; the suite scores the training set (Table 2's task), as it
  does SCALE-UP, the method's input-level companion;
- the benign labelled images are the defense context's trusted clean samples, ``per_class``
  (200) of each class: 2,000 on CIFAR-10, the references' budget, which both draw from the test
  set; here held-out training images where the cell has them, else ground-truth-clean training
  rows (left out of TPR/FPR), never test images;
- where no k reaches ``xi`` the references fail (``prob_start`` returns None); here k* is
  max(1, L - n), so the n models end at all L layers, and the record says ``xi_reached: false``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.models import architecture, batchnorm_layers
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
class IbdPscParams(DefenseParams):
    n: int = 5  # scaled models, each scaling one more BatchNorm layer
    xi: float = field(default=0.6, metadata=within(0, 1))  # benign error rate that fixes k*
    threshold: float = field(default=0.9, metadata=within(0, 1))  # flagged when PSC >= this
    scale: float = 1.5  # factor on the scaled layers' weight and bias
    per_class: int = field(default=200, metadata=at_least(1))  # trusted clean images per class


def scaled_copy(model: nn.Module, layers: int, scale: float) -> nn.Module:
    """A copy of ``model`` in eval mode with the weight and bias of its last ``layers``
    BatchNorm2d layers multiplied by ``scale`` (the original is untouched)."""
    twin = copy.deepcopy(model).eval()
    chosen = list(batchnorm_layers(twin).values())[::-1][:layers]
    with torch.no_grad():
        for bn in chosen:
            if bn.weight is not None:
                bn.weight.mul_(scale)
            if bn.bias is not None:
                bn.bias.mul_(scale)
    return twin


def start_depth(error_at: Callable[[int], float], count: int, xi: float) -> int | None:
    """The reference's ``prob_start``: the first k in 1..count-1 with error_at(k) > xi, or None."""
    return next((k for k in range(1, count) if error_at(k) > xi), None)


def scaled_depths(start: int, n: int, count: int) -> list[int]:
    """How many layers each of the n models scales: start+1, ..., start+n, capped at count."""
    return [min(start + i, count) for i in range(1, n + 1)]


def consistency(trainer: Trainer, model: nn.Module, images: torch.Tensor, depths: list[int],
                scale: float) -> torch.Tensor:
    """PSC of every uint8 image: the mean softmax probability, over the models scaled to each
    depth, of the label the unscaled model predicts (CPU float32)."""
    predicted = trainer.logits(model, images).argmax(1)
    total = torch.zeros(len(images))
    for depth in depths:
        probs = trainer.logits(scaled_copy(model, depth, scale), images).softmax(1)
        total += probs.gather(1, predicted[:, None]).squeeze(1)
    return total / len(depths)


@register_defense
class IbdPsc(TrustedSamples, Defense):
    name = "ibd_psc"
    title = "IBD-PSC (consistency under scaled BatchNorm parameters)"
    Params = IbdPscParams
    is_detector = True

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        if len(batchnorm_layers(model)) < 2:
            raise ValueError(f"IBD-PSC scales BatchNorm2d layers and needs at least two; "
                             f"{architecture(model)} has {len(batchnorm_layers(model))}")

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: IbdPscParams = self.params
        val = self.trusted(ctx)
        model, _, reused = ctx.backdoored_model()
        count = len(batchnorm_layers(model))
        errors: dict[int, float] = {}

        def error_at(k: int) -> float:
            pred = ctx.trainer.logits(scaled_copy(model, k, p.scale), val.images).argmax(1)
            errors[k] = float((pred != val.labels.cpu()).float().mean())
            return errors[k]

        start = start_depth(error_at, count, p.xi)
        reached = start is not None
        if start is None:
            start = max(1, count - p.n)
        depths = scaled_depths(start, p.n, count)
        psc = consistency(ctx.trainer, model, ctx.train.images, depths, p.scale)
        info = {"inspected_model": "reused from cache" if reused else "trained",
                "batchnorm_layers": count, "start_depth": start, "xi_reached": reached,
                "scaled_depths": depths, "validation_errors": {str(k): e for k, e in errors.items()},
                "n_trusted": len(val), "trusted_source": ctx.trusted_source}
        return DefenseResult(model=model, isolated=psc >= p.threshold, scores=psc, info=info,
                             excluded=trusted_excluded(ctx))
