"""Linear algebra and clustering the feature-space detectors share (Spectral Signatures,
Activation Clustering, SPECTRE, SCAn): centring, top singular directions, PCA, FastICA,
and k-means, in torch (float64 on the CPU: the sets are one class's features, a
few thousand rows of at most 512 dimensions, and the decisions hinge on small eigen-gaps).

scikit-learn is not a dependency of the suite; each function states which scikit-learn
behaviour it follows, because the reference implementations call scikit-learn, and
tests/test_clustering.py checks PCA, FastICA and k-means against it (dev extras). Kept in torch:
one dependency fewer for a user, and the features never leave torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def class_rows(labels: torch.Tensor, at_least: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
    """(class, its row indices) for every class in ``labels`` with at least ``at_least`` rows,
    in ascending class order: the per-class loop of every feature-space detector."""
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        if len(rows) >= at_least:
            yield c, rows


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, D) float64 on the CPU."""
    return x.detach().to("cpu", torch.float64).flatten(1)


def top_directions(x: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The top ``k`` right singular vectors of ``x`` (rows as given, not centred), (k, D)."""
    _, _, vh = torch.linalg.svd(as_rows(x), full_matrices=False)
    return vh[:k]


def pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """Projections of the centred rows on their top ``k`` principal axes (scikit-learn's PCA
    without whitening; signs follow the SVD), (N, k)."""
    x = as_rows(x)
    x = x - x.mean(0)
    return x @ top_directions(x, k).T


def fast_ica(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 200, tol: float = 1e-4
             ) -> torch.Tensor:
    """``k`` independent components of the rows (scikit-learn's FastICA defaults: PCA whitening
    to ``k`` dimensions with unit variance, the parallel algorithm with the logcosh contrast,
    a random normal initial unmixing matrix, 200 iterations, tolerance 1e-4), (N, k)."""
    x = as_rows(x)
    x = x - x.mean(0)
    n = len(x)
    u, s, _ = torch.linalg.svd(x.T, full_matrices=False)  # (D, r): the whitening directions
    k = min(k, len(s))
    white = (x @ (u[:, :k] / s[:k])) * n ** 0.5  # (N, k), unit variance per component
    g = torch.Generator().manual_seed(seed)
    w = _sym_decorrelate(torch.randn(k, k, generator=g, dtype=torch.float64))
    for _ in range(max_iter):
        wx = white @ w.T  # (N, k)
        gwx = torch.tanh(wx)
        g_prime = (1 - gwx ** 2).mean(0)
        w_new = _sym_decorrelate(gwx.T @ white / n - g_prime[:, None] * w)
        converged = (torch.einsum("ij,ij->i", w_new, w).abs() - 1).abs().max() < tol
        w = w_new
        if converged:
            break
    return white @ w.T


def _sym_decorrelate(w: torch.Tensor) -> torch.Tensor:
    """(W W^T)^(-1/2) W."""
    s, u = torch.linalg.eigh(w @ w.T)
    return u @ torch.diag(s.clamp(min=1e-12).rsqrt()) @ u.T @ w


def kmeans(x: torch.Tensor, k: int = 2, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-4) -> torch.Tensor:
    """Cluster labels (N,) of Lloyd's k-means with k-means++ seeding, the best of ``n_init``
    starts by inertia (scikit-learn's KMeans defaults; its greedy k-means++ tries several
    candidates per centre, this one draws one)."""
    x = as_rows(x)
    n = len(x)
    if n <= k:
        return torch.arange(n) % k
    g = torch.Generator().manual_seed(seed)
    tol = tol * x.var(0).mean()  # scikit-learn scales the tolerance by the data's variance
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        centres = x[torch.randint(n, (1,), generator=g)]
        while len(centres) < k:
            d2 = torch.cdist(x, centres).min(1).values ** 2
            p = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
            centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=g)]])
        for _ in range(max_iter):
            labels = torch.cdist(x, centres).argmin(1)
            new = torch.stack([x[labels == c].mean(0) if (labels == c).any() else centres[c]
                               for c in range(k)])
            shift = ((new - centres) ** 2).sum()
            centres = new
            if shift <= tol:
                break
        labels = torch.cdist(x, centres).argmin(1)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def top_eigenpair(matvec, dim: int, start: torch.Tensor | None = None, krylov: int = 30,
                  restarts: int = 100, tol: float = 1e-8) -> tuple[float, torch.Tensor]:
    """The largest eigenvalue and its unit eigenvector of a symmetric positive semi-definite
    operator given by ``matvec`` (float64 vectors of length ``dim``): restarted Lanczos with
    full reorthogonalisation (as KrylovKit's ``eigsolve``: a Krylov space of 30, restarts from
    the best Ritz vector), dense for ``dim`` up to the Krylov size."""
    if dim <= krylov:
        dense = torch.stack([matvec(e) for e in torch.eye(dim, dtype=torch.float64)], 1)
        vals, vecs = torch.linalg.eigh((dense + dense.T) / 2)
        return float(vals[-1]), vecs[:, -1]
    v = torch.ones(dim, dtype=torch.float64) if start is None else start.to(torch.float64)
    v = v / v.norm()
    lam = 0.0
    for _ in range(restarts):
        basis, alphas, betas = [v], [], []
        w = matvec(v)
        for j in range(krylov):
            alpha = float(w @ basis[j])
            alphas.append(alpha)
            q = torch.stack(basis)
            w = w - q.T @ (q @ w)  # full reorthogonalisation
            beta = float(w.norm())
            if j == krylov - 1 or beta < 1e-14:
                break
            betas.append(beta)
            basis.append(w / beta)
            w = matvec(basis[-1])
        k = len(alphas)
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas[:k - 1], dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        vals, vecs = torch.linalg.eigh(tri)
        lam = float(vals[-1])
        v = torch.stack(basis[:k]).T @ vecs[:, -1]
        v = v / v.norm()
        if float((matvec(v) - lam * v).norm()) <= tol * max(1.0, abs(lam)):
            break
    return lam, v
