"""Analysis, not a defense: SPECTRE's filter on every class of the cell's cached No Defense
model, with each class's flags kept as a named mask (``class_<c>``), so the record says what
the filter would have flagged in the target class had the class choice (the largest QUE op,
vtu81/backdoor-toolbox's rule) picked it. The isolation is SPECTRE's own (the chosen class);
``info.class_poisoned`` counts the poisoned samples per class (ground truth, for this
analysis only)."""
from dataclasses import dataclass

import torch

from defenses.base import DefenseResult, GroundTruthAnalysis, backdoored_features, register_defense
from defenses.spectre import Spectre, SpectreParams, filter_classes, flag_largest_op


@dataclass
class ProbeParams(SpectreParams):
    pass


@register_defense
class SpectreProbe(GroundTruthAnalysis, Spectre):
    name = "spectre_probe"
    title = "analysis: SPECTRE's filter on every class"
    Params = ProbeParams

    def run(self, ctx):
        model, feats, info = backdoored_features(ctx)
        labels, truth = ctx.train.labels.cpu(), ctx.ground_truth.cpu()
        per_class = filter_classes(feats, labels, self.params)
        flagged, scores, found = flag_largest_op(per_class, len(labels))
        masks = {}
        for c, (rows, f) in per_class.items():
            masks[f"class_{c}"] = torch.zeros(len(labels), dtype=torch.bool)
            masks[f"class_{c}"][rows] = f["flagged"]
        info.update(found)
        info["class_poisoned"] = {str(c): int(truth[rows].sum()) for c, (rows, _) in per_class.items()}
        return DefenseResult(model=model, isolated=flagged, scores=scores, masks=masks, info=info)
