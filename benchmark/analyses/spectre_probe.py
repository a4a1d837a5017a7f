"""Analyses, not defenses, of SPECTRE on the cell's cached No Defense model (ground truth read
for the analysis only):

- ``spectre_probe``: the filter on every class, each class's flags kept as a named mask
  (``class_<c>``), so the record says what the filter would have flagged in the target class
  had the class choice (the largest QUE op, vtu81/backdoor-toolbox's rule) picked it. The
  isolation is SPECTRE's own (the chosen class); ``info.class_poisoned`` counts the poisoned
  samples per class.
- ``spectre_k_probe``: the filter on one class (``probe_class``; 0 is the class `spectre` itself
  chose on Blended at quick, record 901bfa48a32e3d3e) at every k of its sweep, each k's flags
  kept as a named mask (``k_<k>``) with its op and the median QUE scores of the poisoned and
  clean samples, and how spread the two groups' features are in the class. The isolation is
  what SPECTRE flags in that class (its largest-op k)."""
from dataclasses import dataclass

import torch

from benchmark.clustering import as_rows
from defenses.base import DefenseResult, GroundTruthAnalysis, backdoored_features, register_defense
from defenses.spectre import (
    Spectre,
    SpectreParams,
    class_count,
    filter_classes,
    flag_largest_op,
    spectre_class,
)


@dataclass
class ProbeParams(SpectreParams):
    pass


@dataclass
class KProbeParams(SpectreParams):
    probe_class: int = 0


def inspected(ctx):
    """The cached model, its features of the training set, the record's info, labels, poison mask."""
    model, feats, info = backdoored_features(ctx)
    return model, feats, info, ctx.train.labels.cpu(), ctx.ground_truth.cpu()


def on_rows(rows: torch.Tensor, part: torch.Tensor, n: int) -> torch.Tensor:
    """An n-row mask that is ``part`` at ``rows`` and False elsewhere."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[rows] = part
    return mask


def spread(x: torch.Tensor) -> float:
    """Mean squared distance of the rows to their mean."""
    return float(((x - x.mean(0)) ** 2).sum(1).mean())


@register_defense
class SpectreProbe(GroundTruthAnalysis, Spectre):
    name = "spectre_probe"
    title = "analysis: SPECTRE's filter on every class"
    Params = ProbeParams

    def run(self, ctx):
        model, feats, info, labels, truth = inspected(ctx)
        per_class = filter_classes(feats, labels, self.params, ctx.trainer.loops)
        flagged, scores, found = flag_largest_op(per_class, len(labels))
        masks = {f"class_{c}": on_rows(rows, f["flagged"], len(labels))
                 for c, (rows, f) in per_class.items()}
        info.update(found)
        info["class_poisoned"] = {str(c): int(truth[rows].sum()) for c, (rows, _) in per_class.items()}
        return DefenseResult(model=model, isolated=flagged, scores=scores, masks=masks, info=info)


@register_defense
class SpectreKProbe(GroundTruthAnalysis, Spectre):
    name = "spectre_k_probe"
    title = "analysis: SPECTRE's filter on one class at every k"
    Params = KProbeParams

    def run(self, ctx):
        p = self.params
        model, feats, info, labels, truth = inspected(ctx)
        rows = (labels == p.probe_class).nonzero().flatten()
        eps = class_count(p, len(labels), len(rows))
        tried = []
        found = spectre_class(feats[rows], eps, p, on_k=lambda i, t: tried.append(t),
                              loops=ctx.trainer.loops)
        poisoned = truth[rows]
        masks, per_k = {}, {}
        for t in tried:
            masks[f"k_{t['k']}"] = on_rows(rows, t["flagged"], len(labels))
            per_k[str(t["k"])] = {
                "op": t["op"], "flagged": int(t["flagged"].sum()),
                "flagged_poisoned": int((t["flagged"] & poisoned).sum()),
                "score_poisoned_median": float(t["scores"][poisoned].median()),
                "score_clean_median": float(t["scores"][~poisoned].median())}
        x = as_rows(feats[rows]).double()
        info.update({"probe_class": p.probe_class, "eps": eps, "n_class": len(rows),
                     "n_poisoned": int(poisoned.sum()), "chosen_k": found["k"], "per_k": per_k,
                     "spread_poisoned": spread(x[poisoned]), "spread_clean": spread(x[~poisoned]),
                     "mean_distance": float((x[poisoned].mean(0) - x[~poisoned].mean(0)).norm() ** 2)})
        isolated, scores, _ = flag_largest_op({p.probe_class: (rows, found)}, len(labels))
        return DefenseResult(model=model, isolated=isolated, scores=scores, masks=masks, info=info)
