"""SCALE-UP (Guo et al., ICLR 2023): a detector; it trains nothing and inspects the backdoored
model (shared with No Defense).

Every training image, as [0, 1] pixels, is multiplied by each h of ``scales`` and clamped; the
scaled prediction consistency SPC is the share of scales whose prediction equals the
prediction of the image itself. Poisoned images keep their (target) prediction under
amplification, benign ones drift: flag SPC >= ``threshold``. The record also holds AUROC and
the best threshold in hindsight (max TPR - FPR), which is what the paper reports.
Scales 1..11 as the original code (h = 1 counts, so SPC >= 1/11); BackdoorBox's {3,5,7,9,11}
is ``--set 'scale_up.scales=[3,5,7,9,11]'``. The original adds 0.02 * U(0,1) noise to inputs;
the paper does not, nor does this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense


@dataclass
class ScaleUpParams(DefenseParams):
    scales: list[int] = field(default_factory=lambda: list(range(1, 12)))
    threshold: float = 0.5
    chunk: int = 4096  # images scaled at once (bounds memory at 224x224)


def scaled_prediction_consistency(predict, images: torch.Tensor, scales: list[int],
                                  chunk: int = 4096) -> torch.Tensor:
    """SPC of every uint8 image under ``predict`` (uint8 images -> labels). Integer scales of
    integer pixel values clamped at 255 are exact in uint8."""
    out = []
    for s in range(0, len(images), chunk):
        x = images[s:s + chunk]
        base = predict(x)
        # h = 1 is the image itself: consistent by definition, no forward pass
        same = [torch.ones_like(base, dtype=torch.bool) if h == 1 else
                predict((x.to(torch.int32) * h).clamp(0, 255).to(torch.uint8)) == base
                for h in scales]
        out.append(torch.stack(same).float().mean(0))
    return torch.cat(out) if out else torch.empty(0)


@register_defense
class ScaleUp(Defense):
    name = "scale_up"
    title = "SCALE-UP (scaled prediction consistency)"
    Params = ScaleUpParams
    is_detector = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: ScaleUpParams = self.params
        model, _, reused = ctx.backdoored_model()
        spc = scaled_prediction_consistency(lambda x: ctx.trainer.predict(model, x),
                                            ctx.train.images, p.scales, p.chunk)
        return DefenseResult(model=model, isolated=spc >= p.threshold, scores=spc,
                             info={"inspected_model": "reused from cache" if reused else "trained"})
