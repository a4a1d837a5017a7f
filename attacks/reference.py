"""A clean reference model trained once per (dataset, model, seed) and shared by every attack
that needs one (CL's PGD, Trojan's trigger optimisation). Cached under artifacts/models."""

from __future__ import annotations

from torch import nn

from attacks.base import AttackContext
from benchmark.data import ImageSet
from benchmark.train import TrainConfig


def reference_model(ctx: AttackContext, train: ImageSet, epochs: int, lr: float = 0.1) -> nn.Module:
    if ctx.trainer is None or ctx.make_model is None:
        raise RuntimeError("this attack needs a trainer and a model factory in its AttackContext")
    cfg = TrainConfig(epochs=epochs, lr=lr, schedule="onecycle", warmup=0.2, precision=ctx.precision)
    # shared by every attack: nothing of the attack (its version included) is in the key
    key = {**ctx.key("clean_reference"), "phase": "clean-reference", "cfg": cfg.key()}

    model, _, _ = ctx.trainer.fit_cached(ctx.cache, "models", key, ctx.make_model, train.images,
                                         train.labels, cfg, seed=ctx.seed,
                                         desc="clean reference model")
    model.eval()
    return model
