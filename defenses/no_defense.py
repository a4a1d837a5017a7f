"""No Defense: standard training on the poisoned set (the baseline of every table)."""

from __future__ import annotations

from defenses.base import Defense, DefenseContext, DefenseResult, register_defense


@register_defense
class NoDefense(Defense):
    name = "no_defense"
    title = "No Defense (standard training; the baseline)"
    accepts_repoisoning = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        model, curve, reused = ctx.backdoored_model()  # kept for the detectors and NONE
        return DefenseResult(model=model, curves={"train": curve},
                             info={"backdoored_model": "reused from cache" if reused else "trained"})
