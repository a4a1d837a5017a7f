"""An example defense, plugged in from outside the package: ``--plugin examples/loss_filter.py``.

"Loss filter": train normally for a few epochs, drop the ``ratio`` lowest-loss samples (a
backdoor is learned first, so its samples reach the lowest losses early), then train a fresh
model on the rest. A deliberately simple baseline to compare with PIPD:

    python run_benchmark.py --plugin examples/loss_filter.py --grid smoke \\
        --attacks badnets,blended --defenses pipd,loss_filter
    python run_benchmark.py report --plugin examples/loss_filter.py --out report \\
        --compare loss_filter --baseline pipd
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.validate import at_least, within
from defenses import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense
from defenses.base import isolate_lowest_loss


@dataclass
class LossFilterParams(DefenseParams):
    # a field's metadata declares its valid range: `--set loss_filter.ratio=1.5` is refused
    # (one line, exit 2) like a built-in method's option
    probe_epochs: int = field(default=2, metadata=at_least(1))  # training before the losses
    ratio: float = field(default=0.05, metadata=within(0, 1))  # share dropped: the lowest losses


@register_defense
class LossFilter(Defense):
    name = "loss_filter"
    title = "Loss filter (example plugin): drop the lowest-loss samples, retrain"
    Params = LossFilterParams

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: LossFilterParams = self.params
        probe = ctx.make_model()
        ctx.trainer.fit(probe, ctx.train.images, ctx.train.labels,
                        ctx.train_cfg.replace(epochs=p.probe_epochs), seed=ctx.seed, desc="probe")
        isolated, losses = isolate_lowest_loss(ctx, probe, p.ratio)
        model = ctx.make_model()
        curve = ctx.trainer.fit(model, ctx.train.images, ctx.train.labels, ctx.train_cfg,
                                indices=(~isolated).nonzero().flatten(), callbacks=[ctx.monitor],
                                seed=ctx.seed, desc="train on the rest")
        # scores: higher = more suspicious, so the negated loss
        return DefenseResult(model=model, isolated=isolated, scores=-losses, curves={"train": curve})
