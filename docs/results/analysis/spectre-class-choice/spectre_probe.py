"""Analysis, not a defense: SPECTRE's filter on every class of the cell's cached No Defense
model, with each class's flags kept as a named mask (``class_<c>``), so the record says what
the filter would have flagged in the target class had the class choice (the largest QUE op,
vtu81/backdoor-toolbox's rule) picked it. The isolation is SPECTRE's own (the chosen class);
``info.class_poisoned`` counts the poisoned samples per class (ground truth, for this
analysis only)."""
from dataclasses import dataclass

import torch

from benchmark.clustering import class_rows
from defenses.base import DefenseResult, GroundTruthAnalysis, backdoored_features, register_defense
from defenses.spectre import Spectre, SpectreParams, class_eps, spectre_class


@dataclass
class ProbeParams(SpectreParams):
    pass


@register_defense
class SpectreProbe(GroundTruthAnalysis, Spectre):
    name = "spectre_probe"
    title = "analysis: SPECTRE's filter on every class"
    Params = ProbeParams

    def run(self, ctx):
        p = self.params
        model, feats, info = backdoored_features(ctx)
        labels = ctx.train.labels.cpu()
        truth = ctx.ground_truth.cpu()
        expected = p.expected_rate * len(labels)
        masks, ops, ks, poisoned = {}, {}, {}, {}
        best, best_op = None, -float("inf")
        scores = -torch.ones(len(labels), dtype=torch.float64)
        for c, rows in class_rows(labels, at_least=4):
            eps = max(1.0, round(class_eps(expected, len(rows))))
            found = spectre_class(feats[rows], eps, p)
            mask = torch.zeros(len(labels), dtype=torch.bool)
            mask[rows] = found["flagged"]
            masks[f"class_{c}"] = mask
            ops[str(c)], ks[str(c)] = found["op"], found["k"]
            poisoned[str(c)] = int(truth[rows].sum())
            if found["op"] > best_op:
                best, best_op = c, found["op"]
                scores = -torch.ones(len(labels), dtype=torch.float64)
                scores[rows] = found["scores"]
        info.update({"chosen_class": best, "class_op": ops, "class_k": ks,
                     "class_poisoned": poisoned})
        return DefenseResult(model=model, isolated=masks[f"class_{best}"], scores=scores.float(),
                             masks=masks, info=info)
