"""NONE, NON-LinEarity (Wang et al., NeurIPS 2022) — not the No Defense baseline (``no_defense``).

Starting from the backdoored model (shared with No Defense), each round:
1. per-channel spatial max of the conv outputs of stages 2-4 (PIPD's features) on the training
   set, and every sample's softmax;
2. per class k: strong samples (p_k > 0.9) against weak ones (p_k < 0.1), PIPD's discrepancy
   max_strong - (mean_weak + beta * std_weak); per channel the max over classes, starting from
   0 (a channel no class lifts above its weak samples scores 0);
3. reset the top ``reset_ratio`` of channels per layer: zero the conv filter, its BatchNorm
   scale and bias, and the next conv's (or the classifier's) input slice. A block's conv2 feeds
   the next block's conv1 and its shortcut; only the conv1 slice is zeroed, and a projection
   shortcut loses its filter and BatchNorm only;
4. flag samples by the summed activation of each layer's top channel, split with 2-class Jenks
   (score >= break); retrain on the training set without them, BatchNorm statistics frozen
   (plain SGD, momentum 0.9, lr 1e-4, weight decay 1e-4, batch of the base recipe).
Each round drops only its own flagged samples (the reference rebuilds the retraining set from
the whole training set every round); the isolation is the last round's.

Reference: RU-System-Software-and-Security/NONE, ``none/reset_neurons.py`` (the reset),
``none/compromised_detection.py`` (discrepancy, flagging), ``run_none.py`` (retraining reuses
the pre-training SGD: momentum 0.9, weight decay 1e-4, no Nesterov; ``none_lr`` 1e-4; 20 epochs;
one round).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.isolation import channel_discrepancy, layer_features, top_channels
from benchmark.jenks import jenks_upper
from benchmark.models import PreActBlock, architecture, conv_feature_layers
from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense


@dataclass
class NONEParams(DefenseParams):
    rounds: int = 1
    reset_ratio: float = 0.05  # channels reset per layer (reference default; its README: 3% BadNets)
    strong: float = 0.9  # softmax of class k above this: a strong sample of k
    weak: float = 0.1  # below this: a weak sample of k
    beta: float = 3.0
    stages: list[int] = field(default_factory=lambda: [2, 3, 4])
    retrain_epochs: int = 20
    retrain_lr: float = 1e-4
    retrain_weight_decay: float = 1e-4
    retrain_nesterov: bool = False
    freeze_bn: bool = True


def class_discrepancy(features: torch.Tensor, probs: torch.Tensor, strong: float, weak: float,
                      beta: float) -> torch.Tensor | None:
    """Per channel, the largest strong-vs-weak discrepancy over the classes that have both, and
    0 (the reference's start); None when no class has both."""
    best, compared = torch.zeros(features.shape[1]), False
    for k in range(probs.shape[1]):
        hi, lo = probs[:, k] > strong, probs[:, k] < weak
        if hi.any() and lo.sum() > 1:
            best = torch.maximum(best, channel_discrepancy(features, hi, lo, beta))
            compared = True
    return best if compared else None


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"layer{s}.{b}", block) for s in range(1, 5)
            for b, block in enumerate(getattr(model, f"layer{s}", ()))]


@torch.no_grad()
def reset_channels(model: nn.Module, layer: str, channels: torch.Tensor) -> None:
    """Zero ``channels`` of the feature layer ``layer`` (a name from conv_feature_layers) of a
    BasicBlock ResNet: the filter, the BatchNorm that follows, and the next layer's input."""
    blocks = _blocks(model)
    names = [n for n, _ in blocks]
    block_name, part = layer.rsplit(".", 1)
    block = blocks[names.index(block_name)][1]
    if not hasattr(block, "bn2") or not isinstance(block.conv2, nn.Conv2d) or hasattr(block, "conv3"):
        raise ValueError(f"NONE's channel reset supports BasicBlock ResNets, not {type(block).__name__}")
    if part in ("shortcut", "downsample"):
        conv, bn = getattr(block, part)[0], getattr(block, part)[1]
        conv.weight[channels] = 0
        bn.weight[channels], bn.bias[channels] = 0, 0
        return
    conv, bn = (block.conv1, block.bn1) if part == "conv1" else (block.conv2, block.bn2)
    conv.weight[channels] = 0
    bn.weight[channels], bn.bias[channels] = 0, 0
    if part == "conv1":
        block.conv2.weight[:, channels] = 0
        return
    nxt = names.index(block_name) + 1
    if nxt < len(blocks):  # the next conv1 only: the reference leaves the shortcut's input
        blocks[nxt][1].conv1.weight[:, channels] = 0
    else:
        head = getattr(model, "linear", None) or model.fc
        head.weight[:, channels] = 0


@register_defense
class NONE(Defense):
    name = "none"
    title = "NONE (non-linearity defense, Wang et al. 2022; not No Defense)"
    column = "NONE"  # never read as "no defense" in a table
    Params = NONEParams
    # 2: as the reference: conv2 resets leave the next shortcut's input, the discrepancy starts
    # at 0, retraining is plain SGD with weight decay 1e-4, each round drops only its own flags
    version = 2

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        conv_feature_layers(model, tuple(params.stages))
        if not _blocks(model):
            raise ValueError(f"its channel reset edits BasicBlock ResNets (stages layer1-layer4); "
                             f"{architecture(model)} has none")
        for _, block in _blocks(model):  # what reset_channels edits
            if not (hasattr(block, "bn2") and isinstance(getattr(block, "conv2", None), nn.Conv2d)
                    and not hasattr(block, "conv3") and not isinstance(block, PreActBlock)):
                raise ValueError(f"its channel reset edits BasicBlock ResNets (conv1/bn1, conv2/bn2, "
                                 f"shortcut); {architecture(model)}'s stages hold {type(block).__name__}")

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: NONEParams = self.params
        model, curve, reused = ctx.backdoored_model()
        n = len(ctx.train)
        dropped = torch.zeros(n, dtype=torch.bool)
        masks, curves, resets = {}, {"backdoored": curve}, {}
        retrain = ctx.train_cfg.replace(epochs=p.retrain_epochs, lr=p.retrain_lr,
                                        weight_decay=p.retrain_weight_decay,
                                        nesterov=p.retrain_nesterov, optimizer="sgd",
                                        schedule="constant", warmup=0.0, freeze_bn=p.freeze_bn)
        for r in range(1, p.rounds + 1):
            probs = ctx.trainer.logits(model, ctx.train.images).softmax(1)
            feats, slices, names = layer_features(model, ctx.trainer, ctx.train.images,
                                                  tuple(p.stages))
            d = class_discrepancy(feats, probs, p.strong, p.weak, p.beta)
            if d is None:
                break  # no class has both strong and weak samples: nothing to compare
            detect = top_channels(d, slices, rho=0.0, top_k=1)  # each layer's top channel
            flagged = jenks_upper(feats[:, detect].sum(1), inclusive=True)
            for name, sl in zip(names, slices, strict=True):
                chans = top_channels(d[sl], [slice(0, sl.stop - sl.start)], p.reset_ratio)
                reset_channels(model, name, chans)
                resets.setdefault(f"round_{r}", {})[name] = chans.tolist()
            masks[f"round_{r}"] = flagged
            dropped = flagged
            if p.retrain_epochs > 0:
                curves[f"retrain_{r}"] = ctx.trainer.fit(
                    model, ctx.train.images, ctx.train.labels, retrain,
                    indices=(~dropped).nonzero().flatten(), callbacks=[ctx.monitor],
                    seed=ctx.seed + r, desc=f"NONE retrain {r}",
                    checkpoint=ctx.checkpoint(f"retrain_{r}"))
        return DefenseResult(model=model, isolated=dropped, curves=curves, masks=masks,
                             info={"backdoored_model": "reused from cache" if reused else "trained",
                                   "reset_channels": resets, "n_isolated": int(dropped.sum())})
