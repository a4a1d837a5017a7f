"""The hand-written PCA, FastICA and k-means of ``benchmark.clustering`` against scikit-learn,
which the detectors' reference code calls (scikit-learn is in the dev extras only)."""

import numpy as np
import pytest
import torch

from benchmark.clustering import fast_ica, kmeans, pca

sklearn = pytest.importorskip("sklearn", reason="the dev extras install scikit-learn")


def correlated(n: int = 300, d: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 5


def test_pca_projections_equal_scikit_learns_up_to_each_axis_sign():
    from sklearn.decomposition import PCA

    x = correlated()
    ours = pca(torch.from_numpy(x), 5).numpy()
    theirs = PCA(n_components=5, svd_solver="full").fit_transform(x)
    assert np.allclose(np.abs(ours), np.abs(theirs), atol=1e-8)


def test_fast_ica_recovers_the_components_scikit_learn_finds():
    from sklearn.decomposition import FastICA

    rng = np.random.default_rng(1)
    n = 2000
    t = np.linspace(0, 40, n)
    sources = np.c_[np.sign(np.sin(3 * t)), rng.laplace(size=n), rng.uniform(-1, 1, n)]
    x = sources @ rng.normal(size=(3, 6)) + 0.01 * rng.normal(size=(n, 6))
    ours = fast_ica(torch.from_numpy(x), 3, seed=0).numpy()
    theirs = FastICA(n_components=3, whiten="unit-variance", random_state=0, max_iter=200,
                     tol=1e-4).fit_transform(x)
    corr = np.abs(np.corrcoef(ours.T, theirs.T)[:3, 3:])
    assert (corr.max(1) > 0.999).all() and sorted(corr.argmax(1)) == [0, 1, 2]  # a permutation
    assert np.allclose(ours.std(0), 1, atol=1e-6) and np.allclose(theirs.std(0), 1, atol=1e-6)


@pytest.mark.parametrize("spread, exact", [(0.3, True), (2.5, False)])
def test_kmeans_matches_scikit_learn(spread, exact):
    """Separated blobs: the same partition; overlapping ones: their inertia (one Lloyd step too
    few, 0.15% more, fails)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(2)
    centres = rng.normal(scale=4, size=(3, 5))
    x = np.concatenate([c + spread * rng.normal(size=(150, 5)) for c in centres])
    ours = kmeans(torch.from_numpy(x), 3, seed=0).numpy()
    km = KMeans(n_clusters=3, n_init=10, random_state=0).fit(x)

    def inertia(labels: np.ndarray) -> float:
        return sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels))

    if exact:
        assert adjusted_rand_score(ours, km.labels_) == 1.0
    assert inertia(ours) <= (1 + 1e-6) * km.inertia_
