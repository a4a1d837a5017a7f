"""Analysis, not a defense: SCALE-UP's SPC distribution on the poisoned training set (through
per-level masks whose TPR/FPR the harness computes) and on benign held-out test images (against
their labels, as backdoor-toolbox calibrates, and against the model's own predictions)."""
from dataclasses import dataclass

from defenses.base import Defense, DefenseResult, register_defense
from defenses.scale_up import ScaleUpParams, scaled_prediction_consistency


@dataclass
class ProbeParams(ScaleUpParams):
    pass


@register_defense
class SPCProbe(Defense):
    name = "spc_probe"
    Params = ProbeParams
    is_detector = True

    @classmethod
    def validation_fraction(cls, params):
        return params.validation

    def run(self, ctx):
        p = self.params
        model, _, _ = ctx.backdoored_model()
        pred = lambda x: ctx.trainer.predict(model, x)  # noqa: E731
        spc = scaled_prediction_consistency(pred, ctx.train.images, p.scales, p.chunk)
        val_lab = scaled_prediction_consistency(pred, ctx.trusted.images, p.scales, p.chunk,
                                                labels=ctx.trusted.labels)
        val_own = scaled_prediction_consistency(pred, ctx.trusted.images, p.scales, p.chunk)
        n = len(p.scales)
        hist = lambda s: [int(((s * n).round() == k).sum()) for k in range(n + 1)]  # noqa: E731
        masks = {f"spc_ge_{k:02d}": (spc * n).round() >= k for k in range(1, n + 1)}
        return DefenseResult(model=model, isolated=spc >= 0.5, scores=spc, masks=masks, info={
            "heldout_vs_labels_hist": hist(val_lab), "heldout_vs_own_hist": hist(val_own),
            "heldout_vs_labels_mean_std": [float(val_lab.mean()), float(val_lab.std())],
            "heldout_vs_own_mean_std": [float(val_own.mean()), float(val_own.std())],
            "train_hist": hist(spc)})
