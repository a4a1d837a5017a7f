"""SCALE-UP (Guo et al., ICLR 2023): a detector; it trains nothing and inspects the backdoored
model (shared with No Defense).

Every training image, as [0, 1] pixels, is multiplied by each h of ``scales`` and clamped; the
scaled prediction consistency SPC is the share of scales whose prediction equals the
prediction of the image itself. Poisoned images keep their (target) prediction under
amplification, benign ones drift.

Decision (``calibration``):
- ``benign`` (default; vtu81/backdoor-toolbox, ``other_defenses_tool_box/scale_up.py`` with
  ``with_clean_data``, and BackdoorBox's ``SCALE_UP`` with a ``valset``): on benign held-out
  images (``validation`` of the clean test set, seeded; the toolbox takes 2,000 of CIFAR-10's
  10,000 test images), the SPC against their true labels gives a mean mu and a (sample) std
  sigma; a sample is flagged when (SPC - mu) / sigma >= ``threshold`` (0.5);
- ``raw``: flag SPC >= ``threshold``, the rule the toolbox's command line runs
  (``other_defense.py`` builds it without clean data) and v1 of this defense.
The original code (JunfengGo/SCALE-UP) sets no threshold and reports AUROC; the record holds
AUROC and the best threshold in hindsight (max TPR - FPR) beside the rule's TPR/FPR. Both
references score test inputs; the suite scores the training set (Table 2's task), whose images
the model has fitted.
Scales 1..11 as the original code (h = 1 counts, so SPC >= 1/11); the toolbox's {3,5,7,9,11}
is ``--set 'scale_up.scales=[3,5,7,9,11]'``. The original adds 0.02 * U(0,1) noise to inputs;
the paper does not, nor does this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.validate import one_of, within
from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense


@dataclass
class ScaleUpParams(DefenseParams):
    scales: list[int] = field(default_factory=lambda: list(range(1, 12)))
    calibration: str = field(default="benign", metadata=one_of("benign", "raw"))
    threshold: float = 0.5  # on the calibrated score (benign) or on the SPC itself (raw)
    validation: float = field(default=0.2, metadata=within(0, 1))  # benign share of the test set
    chunk: int = 4096  # images scaled at once (bounds memory at 224x224)


def scaled_prediction_consistency(predict, images: torch.Tensor, scales: list[int],
                                  chunk: int = 4096, labels: torch.Tensor | None = None
                                  ) -> torch.Tensor:
    """SPC of every uint8 image under ``predict`` (uint8 images -> labels): agreement with the
    unscaled prediction, or with ``labels`` where given (the toolbox's benign statistics).
    Integer scales of integer pixel values clamped at 255 are exact in uint8."""
    out = []
    for s in range(0, len(images), chunk):
        x = images[s:s + chunk]
        own = predict(x)
        base = own if labels is None else labels[s:s + chunk].to(own.device)
        same = [own == base if h == 1 else
                predict((x.to(torch.int32) * h).clamp(0, 255).to(torch.uint8)) == base
                for h in scales]
        out.append(torch.stack(same).float().mean(0))
    return torch.cat(out).cpu() if out else torch.empty(0)


def calibrated(spc: torch.Tensor, benign_spc: torch.Tensor) -> torch.Tensor:
    """(SPC - mean) / std of the benign held-out SPC (sample std, as torch.std in the toolbox)."""
    return (spc - benign_spc.mean()) / benign_spc.std().clamp(min=1e-12)


@register_defense
class ScaleUp(Defense):
    name = "scale_up"
    title = "SCALE-UP (scaled prediction consistency)"
    Params = ScaleUpParams
    is_detector = True
    version = 2  # 2: flags by the SPC calibrated on benign held-out images (was raw SPC >= 0.5)

    @classmethod
    def validation_fraction(cls, params: DefenseParams) -> float:
        return params.validation if params.calibration == "benign" else 0.0

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: ScaleUpParams = self.params
        model, _, reused = ctx.backdoored_model()

        def predict(x: torch.Tensor) -> torch.Tensor:
            return ctx.trainer.predict(model, x)

        spc = scaled_prediction_consistency(predict, ctx.train.images, p.scales, p.chunk)
        info = {"inspected_model": "reused from cache" if reused else "trained"}
        if p.calibration == "benign":
            if ctx.trusted is None:
                raise ValueError("SCALE-UP's benign calibration needs a validation set (ctx.trusted)")
            benign = scaled_prediction_consistency(predict, ctx.trusted.images, p.scales, p.chunk,
                                                   labels=ctx.trusted.labels)
            score = calibrated(spc, benign)
            info.update(benign_spc_mean=float(benign.mean()), benign_spc_std=float(benign.std()),
                        n_validation=len(ctx.trusted))
        else:
            score = spc
        return DefenseResult(model=model, isolated=score >= p.threshold, scores=score, info=info)
