"""Analysis, not a defense: where PIPD's pre-isolation (LGA) model ranks the poisoned, cover and
benign samples by loss, on the cached LGA model of the cell's PIPD settings (a PIPD variant,
so the preset's PIPD settings and cache apply). The isolation is P_p itself (the 1% lowest
loss), so the record's TPR is P_p's share of the poisoned samples and its
``cover_isolated_rate`` the cover samples' share in P_p; the masks are the lowest 0.5-20%."""
from dataclasses import dataclass

import torch

from defenses.base import DefenseResult, GroundTruthAnalysis, isolate_lowest_loss, register_defense
from defenses.pipd import PIPD, PIPDParams


@dataclass
class ProbeParams(PIPDParams):
    pass


@register_defense
class LGAProbe(GroundTruthAnalysis, PIPD):
    name = "lga_probe"
    title = "analysis: loss ranks under PIPD's LGA model"
    Params = ProbeParams

    def run(self, ctx):
        model, _, reused = self.pre_isolation_model(ctx)
        seed, losses = isolate_lowest_loss(ctx, model, self.params.p)
        order = losses.argsort()
        rank = torch.empty(len(losses), dtype=torch.long)
        rank[order] = torch.arange(len(losses))
        frac = rank.double() / len(losses)  # 0: lowest loss
        masks = {f"lowest_{q:g}pct": frac < q / 100 for q in (0.5, 1, 2, 5, 10, 20)}
        truth = ctx.ground_truth
        qs = torch.tensor([0.01, 0.1, 0.5, 0.9])

        def quantiles(m):
            return [float(v) for v in torch.quantile(losses[m].double(), qs.double())] if m.any() else []

        info = {"lga_model": "reused from cache" if reused else "trained",
                "loss_quantiles_poisoned_1_10_50_90": quantiles(truth),
                "loss_quantiles_rest_1_10_50_90": quantiles(~truth),
                "rank_fraction_poisoned_1_10_50_90": [float(v) for v in
                                                      torch.quantile(frac[truth], qs.double())]}
        return DefenseResult(model=model, isolated=seed, scores=-losses, masks=masks, info=info)
