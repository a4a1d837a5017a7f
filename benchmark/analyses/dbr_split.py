"""Analysis, not a defense: D-BR's sample distinguishment alone (its SD model, the FCT and the
quantile split), without the removal. The isolation is D_p, the named mask ``d_c`` says how many
poisoned samples D_c (the set D-BR relearns on) holds, and the info counts the rows whose FCT is
exactly 0 (the tie that makes D_c larger than its 20%). Made for Blended at quick, where D-BR's
removal left the ASR at 99.59 (record 70587eb67b994513)."""
from dataclasses import dataclass

import torch

from defenses.base import DefenseResult, register_defense
from defenses.dbr import DBR, DBRParams


@dataclass
class SplitParams(DBRParams):
    pass


@register_defense
class DBRSplit(DBR):
    name = "dbr_split"
    title = "analysis: D-BR's split alone"
    Params = SplitParams
    is_detector = True

    def run(self, ctx):
        fct, clean, poisoned, curves = self.distinguish(ctx)
        model, _, _ = ctx.backdoored_model()
        qs = torch.tensor([0.05, 0.2, 0.5, 0.95], dtype=torch.float64)
        info = {"n_clean": int(clean.sum()), "n_poisoned": int(poisoned.sum()),
                "fct_exactly_zero": int((fct == 0).sum()),
                "fct_quantiles_5_20_50_95": [float(v) for v in torch.quantile(fct.double(), qs)]}
        return DefenseResult(model=model, isolated=poisoned, scores=fct, curves=curves, info=info,
                             masks={"d_c": clean})
