"""SPECTRE (Hayase, Kong, Somani, Oh, ICML 2021): a detector on the backdoored model's features
(the cached No Defense model; it trains nothing).

Per class, with eps the expected number of poisoned samples:
1. centre the class's features and project them on their top ``pca_dims`` (64) principal axes;
2. for every k of {1, 4, 9, ..., pca_dims} (the squares of 1 .. sqrt(pca_dims)): project on the
   top k axes, estimate a robust covariance (the DKK17 filter: whiten by the second moment, drop
   points by the top eigenvector of the fourth-moment operator until it looks Gaussian, at most
   2 eps points), whiten every point by it, and score each by QUE, x^T M x with
   M = exp(alpha (S' - I) / (||S'|| - 1)) / tr(...), S' the whitened covariance, alpha 4
   (k = 1: the squared projection, no robust step);
3. keep the k whose kept set gives the largest QUE "op" statistic, tr(S'M) / tr(M), on the
   ``pca_dims``-dimensional features, and flag that k's 1.5 eps highest scores.
The class with the largest op is the one flagged (the defender does not know the target).

References, and which one each choice follows. The authors' SewoongLab/spectre-defense (ccf594a;
``quantum_filters.jl``, ``dkk17.jl``, ``rep_saver.py``) filters the known target class with the
true poison count as eps, on layer 3's last block before its ReLU (flattened; ``rep_saver.py``
layer 13 of its ResNet-18), 100 PCA dimensions, k up to 100. vtu81/backdoor-toolbox (9d4d909,
``cleanser.py`` and its copy of the Julia code), which a defender without the target can run,
filters every class with eps = the whole set's expected count (capped at a third of the class,
a tenth below 500 samples), flags the class of the largest op, and reads the penultimate
(pooled) features with 64 PCA dimensions, k up to 64. The defaults are the toolbox's, the
choices it makes together; ``pca_dims=100`` and ``features=layer3`` are the authors' (their
target-class oracle is not offered: a defense here never learns the target). ``expected_rate``
is the toolbox's rate (it passes the true one; the default 0.05 is the suite's attacks' rate).
The authors also read their features under the training augmentation (crop and flip, model in
eval mode); here they are read without it, as the toolbox does. The toolbox's Python port
``spectre_python.py`` (unused by the toolbox itself) is not followed. The top eigenpair is
Lanczos with restarts (KrylovKit's ``eigsolve`` there).

The record's score is each sample's QUE score in the chosen class, the others -1 (the rule:
the 1.5 eps highest); per class, op, the chosen k and eps go to the record's info.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.clustering import as_rows, class_rows, top_directions, top_eigenpair
from benchmark.devrun import REAL, Loops
from benchmark.models import last_residual_block
from benchmark.progress import Phase
from benchmark.validate import at_least, one_of, within
from defenses.base import (
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    backdoored_features,
    register_defense,
)

C_EARLY = 10  # the filter's constant C (its C' is 0)
SHIFT = 3  # the filter's shift of the median deviation


@dataclass
class SpectreParams(DefenseParams):
    expected_rate: float = field(default=0.05, metadata=within(0, 1))
    alpha: float = 4.0
    pca_dims: int = field(default=64, metadata=at_least(1))  # the toolbox's; the authors' 100
    features: str = field(default="penultimate", metadata=one_of("penultimate", "layer3"))
    tau: float = 0.1
    limit_filter: float = 2.0  # at most this x eps points dropped by the robust estimate
    limit_remove: float = 1.5  # this x eps points flagged


def lowest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's ``k_lowest_ind``: values <= the k-th smallest (ties included)."""
    if k <= 0:
        return torch.zeros(len(values), dtype=torch.bool)
    return values <= values.sort().values[min(k, len(values)) - 1]


def tail(t: float, eps: float) -> float:
    return 1.0 if t <= 10 * math.log(1 / eps) else 3 * eps / (t * math.log(t)) ** 2


def sqrt_inv(cov: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((cov + cov.T) / 2)
    return vecs @ torch.diag(vals.clamp(min=1e-12).rsqrt()) @ vecs.T


def covariance_filter(s: torch.Tensor, eps: float, tau: float, limit: int,
                      start: torch.Tensor | None = None, loops: Loops = REAL
                      ) -> tuple[torch.Tensor | bool | None, torch.Tensor | None]:
    """One round of DKK17's filter on the rows of ``s`` (n, d): (a keep mask, True when the
    points look Gaussian (done), None when no cut qualifies (the reference gives up); the top
    eigenvector found, to start the next round's search from)."""
    n, d = s.shape
    y = s @ sqrt_inv(s.T @ s / n)
    norms = (y * y).sum(1)
    far = norms >= C_EARLY * d * math.log(n / tau)
    if far.any():
        return ~far | lowest(norms, max(0, n - limit)), start

    def operator(v: torch.Tensor) -> torch.Tensor:
        m = v.view(d, d)
        w = ((y @ m) * y).sum(1)
        return ((y.T * w) @ y / n - torch.trace(m) * torch.eye(d, dtype=y.dtype)).flatten()

    # a development run's features repeat a few rows: a degenerate spectrum, so few restarts
    lam, v = top_eigenpair(operator, d * d, start, restarts=100 if loops.dev is None else 2)
    if lam <= 1 + C_EARLY * eps * math.log(1 / eps) ** 2:  # Q(P) / 2 = ||P||_F^2 = 1
        return True, v
    m = v.view(d, d)
    m = (m + m.T) / 2
    ps = (((y @ m) * y).sum(1) - torch.trace(m)) / math.sqrt(2)
    diffs = (ps - ps.median()).abs()
    for i, diff in enumerate(diffs.sort().values.tolist(), 1):
        t = diff - SHIFT
        if diff < SHIFT or t <= 0:
            continue
        if i / n >= tail(t, eps):
            return (diffs <= t) | lowest(diffs, max(0, n - limit)), v
    return None, v


def robust_selection(s: torch.Tensor, eps: float, tau: float, limit: int,
                     loops: Loops = REAL) -> torch.Tensor:
    """The reference's ``cov_estimation_iterate``: filter the survivors until done, failed, or
    ``limit`` points are gone; the kept mask over the rows of ``s``."""
    keep = torch.arange(len(s))
    start = None  # the reference starts every search from ones; the last vector is closer
    for _ in loops.indices(len(s)):  # each round drops at least one point
        if limit <= 0:
            break
        picked, start = covariance_filter(s[keep], eps, tau, limit, start, loops)
        if picked is True or picked is None:
            break
        limit -= int((~picked).sum())
        keep = keep[picked]
    out = torch.zeros(len(s), dtype=torch.bool)
    out[keep] = True
    return out


def que(white: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M / tr M, the whitened covariance S') for whitened rows."""
    sp = torch.cov(white.T).reshape(white.shape[1], white.shape[1])
    m = torch.linalg.matrix_exp(alpha * (sp - torch.eye(len(sp), dtype=sp.dtype))
                                / (torch.linalg.matrix_norm(sp, 2) - 1))
    return m / torch.trace(m), sp


def quantum_filter(z: torch.Tensor, k: int, eps: float, p: SpectreParams, loops: Loops = REAL
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, kept mask) of the reference's ``rcov_quantum_filter`` at k dimensions; ``z`` is
    the class's centred projection on its principal axes (n, >= k)."""
    x = z[:, :k]
    n = len(x)
    if k == 1:
        scores = x[:, 0] ** 2
    else:
        kept = robust_selection(x, eps / n, p.tau, round(p.limit_filter * eps), loops)
        sigma = torch.cov(x[kept].T, correction=0)
        white = x @ sqrt_inv(sigma)
        m, _ = que(white, p.alpha)
        scores = ((white @ m) * white).sum(1)
    flagged = lowest(-scores, round(p.limit_remove * eps))
    return scores, ~flagged


def dimensions(p: SpectreParams, dims: int) -> list[int]:
    """The k of the sweep: the squares of 1 .. sqrt(``pca_dims``) (both references' grid: 10
    values up to 100, 8 up to 64), at most ``dims``."""
    return [i * i for i in range(1, math.isqrt(p.pca_dims) + 1) if i * i <= dims]


def spectre_class(feats: torch.Tensor, eps: float, p: SpectreParams,
                  on_k: Callable[[int, dict], None] = lambda i, tried: None, loops: Loops = REAL
                  ) -> dict:
    """The auto filter on one class: the chosen k, its op, scores and flags (``on_k(i, tried)``
    after the i-th k, with that k's op, scores and flags: for progress and analyses)."""
    x = as_rows(feats)
    x = x - x.mean(0)
    dims = min(p.pca_dims, x.shape[1], len(x) - 1)
    z = x @ top_directions(x, dims).T
    best: dict = {"op": -math.inf}
    ks = dimensions(p, dims)
    for i, k in enumerate([ks[i] for i in loops.indices(len(ks))], 1):  # dev run: first and last
        scores, kept = quantum_filter(z, k, eps, p, loops)
        sigma = torch.cov(z[kept].T)
        white = z @ sqrt_inv(sigma)
        m, sp = que(white, p.alpha)
        op = float(torch.trace(sp @ m) / torch.trace(m))
        tried = {"op": op, "k": k, "scores": scores, "flagged": ~kept}
        if op > best["op"]:
            best = tried
        on_k(i, tried)
    return best


def class_eps(expected: float, n: int) -> float:
    """The toolbox's per-class eps: the whole set's expected count, at most a third of the
    class (a tenth below 500 samples), a tenth of it where the count is 0."""
    eps = expected if expected > 0 else 0.1 * n
    return min(eps, 0.1 * n if n < 500 else 0.33 * n)


def class_count(p: SpectreParams, n_set: int, n_class: int) -> float:
    """The eps a class of ``n_class`` rows of an ``n_set``-row set is filtered with: the
    toolbox's eps rounded to a count of at least one."""
    return max(1.0, round(class_eps(p.expected_rate * n_set, n_class)))


def filter_classes(feats: torch.Tensor, labels: torch.Tensor, p: SpectreParams,
                   loops: Loops = REAL) -> dict[int, tuple[torch.Tensor, dict]]:
    """Every class (of at least 4 rows) filtered: class -> (its rows, ``spectre_class``'s
    result), with a progress line per k and per class."""
    per_class = {}
    classes = list(class_rows(labels, at_least=4))
    phase = Phase("SPECTRE k sweep (epoch: class)", len(classes), len(dimensions(p, p.pca_dims)))
    for done, (c, rows) in enumerate(classes, 1):
        found = spectre_class(feats[rows], class_count(p, len(labels), len(rows)), p,
                              on_k=lambda i, _, done=done: phase.step(done, i), loops=loops)
        phase.epoch_done(done, {"class": c, "k": found["k"], "op": found["op"]})
        per_class[c] = (rows, found)
    return per_class


def flag_largest_op(per_class: dict[int, tuple[torch.Tensor, dict]], n: int
                    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(flagged, scores, per-class info) over the n rows: the class of the largest op (the first
    on a tie) flagged and scored, every other row scored -1."""
    best_class = max(per_class, key=lambda c: per_class[c][1]["op"]) if per_class else None
    scores = -torch.ones(n, dtype=torch.float64)
    flagged = torch.zeros(n, dtype=torch.bool)
    if best_class is not None:
        rows, found = per_class[best_class]
        scores[rows] = found["scores"]
        flagged[rows] = found["flagged"]
    info = {"chosen_class": best_class,
            "class_op": {str(c): f["op"] for c, (_, f) in per_class.items()},
            "class_k": {str(c): f["k"] for c, (_, f) in per_class.items()}}
    return flagged, scores.float(), info


def spectre(feats: torch.Tensor, labels: torch.Tensor, p: SpectreParams, loops: Loops = REAL
            ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(flagged, scores, per-class info) over the whole set: every class filtered, the class
    of the largest op flagged."""
    return flag_largest_op(filter_classes(feats, labels, p, loops), len(labels))


@register_defense
class Spectre(Defense):
    name = "spectre"
    title = "SPECTRE (robust covariance, QUE scores)"
    Params = SpectreParams
    is_detector = True
    version = 2  # 2: the toolbox's 64 PCA dimensions and k grid by default (was the authors' 100)

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        if params.features == "layer3":
            try:
                last_residual_block(model, 3)
            except ValueError as exc:
                raise ValueError(f"spectre.features=layer3: {exc} (features=penultimate reads any "
                                 "model)") from None

    def run(self, ctx: DefenseContext) -> DefenseResult:
        model, feats, info = backdoored_features(ctx, self.params.features)
        flagged, scores, found = spectre(feats, ctx.train.labels.cpu(), self.params, ctx.trainer.loops)
        info.update(found)
        return DefenseResult(model=model, isolated=flagged, scores=scores, info=info)
