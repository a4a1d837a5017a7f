"""No Defense: standard training on the poisoned set (the baseline of every table)."""

from __future__ import annotations

from defenses.base import Defense, DefenseContext, DefenseResult, register_defense


@register_defense
class NoDefense(Defense):
    name = "no_defense"

    def run(self, ctx: DefenseContext) -> DefenseResult:
        model = ctx.make_model()
        curve = ctx.trainer.fit(model, ctx.train.images, ctx.train.labels, ctx.train_cfg,
                                callback=ctx.monitor, seed=ctx.seed, desc="train")
        return DefenseResult(model=model, curves={"train": curve})
