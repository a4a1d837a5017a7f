"""Activation Clustering (Chen et al., 2018, "Detecting Backdoor Attacks on Deep Neural
Networks by Activation Clustering"): a detector on the backdoored model's penultimate features
(the cached No Defense model; it trains nothing).

Per class: centre the features, reduce them to ``dims`` (10) dimensions, split them with 2-means,
and flag the smaller cluster when it holds less than ``size_threshold`` (0.35) of the class.
This is vtu81/backdoor-toolbox's ``cleansers_tool_box/activation_clustering.py`` (9d4d909),
the PyTorch reference: PCA by SVD (``reduce="pca"``), scikit-learn's KMeans defaults, the
size rule (ART's ``relative-size`` analysis). ``reduce="ica"`` is the paper's FastICA (as
SCLBD/BackdoorBench's ``detection_pretrain/ac.py``, unit-variance whitening). The toolbox
prints the class's silhouette score but does not use it; neither does this.

Not followed: ART's (Trusted-AI/adversarial-robustness-toolbox 23539e2) default analysis,
``smaller``, flags the smaller cluster of every class with no threshold, so a clean class
loses up to half its samples.

The record's score is the relative size of the sample's cluster, negated (higher: more
suspicious), so the rule is the score above -``size_threshold``; AUROC is over those sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.clustering import class_rows, fast_ica, kmeans, pca
from benchmark.validate import one_of, within
from defenses.base import (
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    backdoored_features,
    register_defense,
)


@dataclass
class ACParams(DefenseParams):
    dims: int = 10
    reduce: str = field(default="pca", metadata=one_of("pca", "ica"))
    size_threshold: float = field(default=0.35, metadata=within(0, 1))


def cluster_share(feats: torch.Tensor, labels: torch.Tensor, dims: int, reduce: str, seed: int
                  ) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Per sample, the share of its class that its 2-means cluster holds; per class, the two
    cluster sizes."""
    share = torch.ones(len(labels), dtype=torch.float64)
    sizes: dict[int, list[int]] = {}
    for c, rows in class_rows(labels, at_least=3):
        x = feats[rows]
        k = min(dims, x.shape[1], len(rows) - 1)
        low = fast_ica(x, k, seed=seed) if reduce == "ica" else pca(x, k)
        assign = kmeans(low, 2, seed=seed)
        counts = torch.bincount(assign, minlength=2)
        share[rows] = counts[assign].double() / len(rows)
        sizes[c] = counts.tolist()
    return share, sizes


@register_defense
class ActivationClustering(Defense):
    name = "ac"
    title = "Activation Clustering (2-means per class, the smaller cluster)"
    Params = ACParams
    is_detector = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        p: ACParams = self.params
        model, feats, info = backdoored_features(ctx)
        share, sizes = cluster_share(feats, ctx.train.labels.cpu(), p.dims, p.reduce, ctx.seed)
        flagged = share < p.size_threshold
        info["cluster_sizes"] = {str(c): s for c, s in sizes.items()}
        return DefenseResult(model=model, isolated=flagged, scores=(-share).float(), info=info)
