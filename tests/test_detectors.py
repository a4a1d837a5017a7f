"""The feature-space and input-space detectors of issue 26 on constructed cases with a known
answer: planted poisoned rows must be the ones flagged, clean classes must stay clean."""

import math

import pytest
import torch

from benchmark.clustering import fast_ica, kmeans, pca, top_eigenpair


def gaussian_classes(n: int = 200, d: int = 16, classes: int = 4, seed: int = 0, spread: float = 6.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, d, generator=g) * spread
    labels = torch.arange(classes).repeat_interleave(n)
    return means[labels] + torch.randn(len(labels), d, generator=g), labels, g


def plant(feats, labels, g, count: int, shift: float, target: int = 0):
    """``count`` extra rows of class ``target``: its mean moved by ``shift`` along one direction."""
    d = feats.shape[1]
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    base = feats[labels == target].mean(0)
    extra = base + shift * direction + torch.randn(count, d, generator=g)
    feats = torch.cat([feats, extra])
    labels = torch.cat([labels, torch.full((count,), target)])
    planted = torch.zeros(len(labels), dtype=torch.bool)
    planted[-count:] = True
    return feats, labels, planted


def test_clustering_primitives_recover_planted_structure():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(60, 5, generator=g), torch.randn(40, 5, generator=g) + 10])
    lab = kmeans(x, 2, seed=0)
    assert lab[:60].unique().numel() == 1 and lab[60:].unique().numel() == 1 and lab[0] != lab[-1]
    p = pca(x, 2)
    assert p.shape == (100, 2) and p[:, 0].var() > 10 * p[:, 1].var()  # the split is axis 1
    # two independent non-Gaussian sources mixed: ICA unmixes them up to sign and order
    s = torch.stack([torch.rand(2000, generator=g) - 0.5, torch.sign(torch.randn(2000, generator=g))], 1)
    mixed = s @ torch.tensor([[2.0, 1.0], [1.0, 1.5]])
    ica = fast_ica(mixed, 2, seed=0)
    corr = torch.corrcoef(torch.cat([ica.T, s.T.double()]))[:2, 2:].abs()
    assert (corr.max(1).values > 0.99).all()
    a = torch.randn(50, 40, generator=g, dtype=torch.float64)
    m = a.T @ a
    lam, v = top_eigenpair(lambda u: m @ u, 40)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(m)[-1]), rel=1e-9)
    assert torch.allclose(m @ v, lam * v, atol=1e-6 * lam)


def test_spectral_signatures_flags_exactly_the_shifted_rows():
    from defenses.spectral import flag_top, spectral_scores

    feats, labels, g = gaussian_classes()
    feats, labels, planted = plant(feats, labels, g, 20, shift=8.0)
    scores = spectral_scores(feats, labels)
    flagged = flag_top(scores, labels, lambda n: 20 if n == 220 else 0)
    assert torch.equal(flagged, planted)
    # the toolbox's budget, 1.5 x rate x the whole set, capped at half a class
    from defenses.spectral import SpectralParams
    p = SpectralParams(expected_rate=0.05)
    assert min(p.factor * p.expected_rate * len(labels), 220 // 2) == pytest.approx(1.5 * 0.05 * 820)


@pytest.mark.parametrize("reduce", ["pca", "ica"])
def test_activation_clustering_splits_a_planted_cluster_and_leaves_one_gaussian_class(reduce):
    from defenses.activation_clustering import cluster_share

    feats, labels, g = gaussian_classes()
    feats, labels, planted = plant(feats, labels, g, 40, shift=12.0)
    share, sizes = cluster_share(feats, labels, dims=10, reduce=reduce, seed=0)
    flagged = share < 0.35
    assert torch.equal(flagged, planted)  # 40 of 240 = 0.17 < 0.35; a Gaussian splits ~50/50
    assert sorted(sizes[0]) == [40, 200]


def test_strip_entropy_is_low_where_a_trigger_dominates_the_blends():
    from benchmark.train import Trainer
    from defenses.strip import frr_threshold, strip_entropy

    class Corner(torch.nn.Module):  # class 0 when pixel (0, 0) of channel 0 is bright, else none
        def forward(self, x):
            logits = torch.zeros(len(x), 10)
            logits[:, 0] = 50 * (x[:, 0, 0, 0] - 0.9)
            return logits

    tr = Trainer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), device="cpu", channels_last=False)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 100, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    train = torch.randint(0, 100, (30, 3, 8, 8), generator=g, dtype=torch.uint8)
    train[:10, 0, 0, 0] = 255  # the trigger: a bright corner survives any blend
    h = strip_entropy(Corner(), tr, train, clean, n=16, alpha=1.0, batch_size=8, generator=g)
    clean_h = strip_entropy(Corner(), tr, clean, clean, n=16, alpha=1.0, batch_size=8, generator=g)
    assert h[:10].max() < 0.5 and h[10:].min() > 2.0  # log 9 = 2.197 for a uniform 9-way guess
    bound = frr_threshold(clean_h, 0.1)
    assert torch.equal(h < bound, torch.arange(30) < 10)
    assert frr_threshold(torch.arange(20.0), 0.1) == 2.0  # the floor(0.1 x 20)-th smallest, 0-based


def test_scan_flags_the_class_with_two_identities_and_the_subgroup_clean_data_avoids():
    from defenses.scan import anomaly_index, scan

    feats, labels, _ = gaussian_classes(n=150, d=8, classes=10, spread=4.0)
    g = torch.Generator().manual_seed(0)
    means = torch.stack([feats[labels == c].mean(0) for c in range(10)])
    clean_labels = torch.arange(10).repeat_interleave(40)
    clean = means[clean_labels] + torch.randn(len(clean_labels), 8, generator=g)
    # poisoned: 60 rows with class 3's identity, labelled 0
    feats = torch.cat([feats, means[3] + torch.randn(60, 8, generator=g)])
    labels = torch.cat([labels, torch.zeros(60, dtype=torch.long)])
    planted = torch.arange(len(labels)) >= len(labels) - 60
    flagged, score, info = scan(feats, labels, clean, clean_labels, math.e ** 2, seed=0)
    assert info["class_index"]["0"] > 100 and max(
        v for c, v in info["class_index"].items() if c != "0") < math.e ** 2
    assert torch.equal(flagged, planted)
    assert torch.equal(score > math.e ** 2, flagged)  # the score reproduces the rule
    # the authors' one-identity mean: J follows the class's distance from the feature centre
    _, _, ref = scan(feats, labels, clean, clean_labels, math.e ** 2, seed=0, test_mean="reference")
    farthest = str(int((means - feats.mean(0)).norm(dim=1).argmax()))
    assert max(ref["class_index"], key=ref["class_index"].get) == farthest != "0"
    idx = anomaly_index(torch.tensor([1.0, 2.0, 3.0, 4.0, 50.0], dtype=torch.float64))
    assert idx[2] == 0 and idx[-1] == pytest.approx((1.0 - 0.06) / (0.02 * 1.4826))


def test_spectre_picks_the_poisoned_class_and_flags_its_planted_rows():
    from benchmark import progress
    from defenses.spectre import SpectreParams, class_eps, spectre

    feats, labels, g = gaussian_classes(n=400, d=12, classes=3)
    feats, labels, planted = plant(feats, labels, g, 40, shift=10.0)
    p = SpectreParams(expected_rate=40 / len(labels), pca_dims=9)
    events = []
    old = progress.set_sink(events.append)
    try:
        flagged, scores, info = spectre(feats, labels, p)
    finally:
        progress.set_sink(old)
    assert info["chosen_class"] == 0
    # progress: one epoch event per class, each with the k its sweep chose
    done = [e for e in events if e["kind"] == "epoch"]
    assert [e["metrics"]["class"] for e in done] == [0, 1, 2]
    assert [e["metrics"]["k"] for e in done] == [info["class_k"][str(c)] for c in range(3)]
    assert flagged[planted].all()  # every planted row among the 1.5 eps = 60 flagged
    assert int(flagged.sum()) == 60 and not flagged[labels != 0].any()
    assert class_eps(1000, 3000) == 990 and class_eps(1000, 400) == 40 and class_eps(0, 600) == 60


def test_spectre_sweeps_the_squares_up_to_its_pca_dimensions_as_both_references():
    from defenses.spectre import SpectreParams, dimensions

    assert SpectreParams().pca_dims == 64 and SpectreParams().features == "penultimate"  # the toolbox's
    assert dimensions(SpectreParams(), 64) == [1, 4, 9, 16, 25, 36, 49, 64]  # the toolbox's 8
    assert dimensions(SpectreParams(pca_dims=100), 100) == [i * i for i in range(1, 11)]  # the authors' 10
    assert dimensions(SpectreParams(pca_dims=100), 30) == [1, 4, 9, 16, 25]  # a class of 31 rows
