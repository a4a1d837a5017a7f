"""CA, ASR, R-Acc, TPR, FPR, AUROC, best-threshold rates — all as fractions in [0, 1]."""

from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred.cpu() == labels.cpu()).float().mean()) if len(labels) else float("nan")


def attack_success_rate(pred_triggered: torch.Tensor, target: int | torch.Tensor) -> float:
    """Fraction of triggered test images classified as the target class (``target``: one class,
    or each image's own, all-to-all)."""
    if not len(pred_triggered):
        return float("nan")
    target = target.cpu() if isinstance(target, torch.Tensor) else target
    return float((pred_triggered.cpu() == target).float().mean())


def isolation_rates(isolated: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float]:
    """TPR = isolated poisoned / poisoned; FPR = isolated benign / benign; plus counts."""
    iso, poi = isolated.bool().cpu(), poisoned.bool().cpu()
    n_p, n_b = int(poi.sum()), int((~poi).sum())
    tp, fp = int((iso & poi).sum()), int((iso & ~poi).sum())
    return {
        "tpr": tp / n_p if n_p else float("nan"),
        "fpr": fp / n_b if n_b else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "n_isolated": tp + fp, "n_poisoned": n_p, "true_positives": tp, "false_positives": fp,
    }


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more suspicious); ties count half.

    The Mann-Whitney U statistic with average ranks; no scikit-learn needed.
    """
    s, pos = scores.double().cpu(), positive.bool().cpu()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.double)
    uniq, inverse = s.unique(return_inverse=True)  # average the ranks of tied scores
    avg = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inverse, ranks)
    avg /= torch.bincount(inverse, minlength=len(uniq)).double()
    r = avg[inverse]
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold(scores: torch.Tensor, positive: torch.Tensor) -> dict[str, float]:
    """The threshold (flag ``score >= t``) that maximises TPR - FPR, with its TPR and FPR:
    an oracle's choice, since it reads the ground truth (what SCALE-UP's paper reports)."""
    s, pos = scores.double().cpu(), positive.bool().cpu()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return {"threshold": float("nan"), "tpr": float("nan"), "fpr": float("nan")}
    order = s.argsort(descending=True)
    tp = pos[order].double().cumsum(0)
    fp = (~pos[order]).double().cumsum(0)
    last = torch.ones(len(s), dtype=torch.bool)  # only cut between distinct scores
    last[:-1] = s[order][1:] != s[order][:-1]
    j = torch.where(last, tp / n_pos - fp / n_neg, torch.tensor(-2.0, dtype=torch.double)).argmax()
    return {"threshold": float(s[order][j]), "tpr": float(tp[j] / n_pos), "fpr": float(fp[j] / n_neg)}
