import pytest
import torch

from benchmark.losses import lga_loss, selective_loss
from defenses.pipd import channel_scores


def synthetic_features(n=300, n_poison=15, seed=0):
    """Two layers of 25 channels; channel 7 of layer 0 and 3 of layer 1 fire on poisoned samples."""
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, 50, generator=g)
    poisoned = torch.zeros(n, dtype=torch.bool)
    poisoned[torch.randperm(n, generator=g)[:n_poison]] = True
    f[poisoned, 7] += 5.0
    f[poisoned, 25 + 3] += 5.0
    return f, [slice(0, 25), slice(25, 50)], poisoned


def test_one_step_isolation_finds_the_trigger_channels():
    f, slices, poisoned = synthetic_features()
    poison_seed = poisoned.clone()
    poison_seed[poisoned.nonzero().flatten()[3:]] = False  # 3 known poisoned samples
    benign_seed = ~poisoned & (torch.arange(300) < 100)
    scores, kept = channel_scores(f, slices, poison_seed, benign_seed, beta=3.0, rho=0.04,
                                  top_k=None)
    assert sorted(kept.tolist()) == [7, 28]  # ceil(0.04 * 25) = 1 channel per layer
    from benchmark.jenks import jenks_upper

    assert torch.equal(jenks_upper(scores, inclusive=False), poisoned)
    # the reference's ">= break" also flags the break itself: the top-scoring benign sample
    top_benign = scores.masked_fill(poisoned, float("-inf")).argmax()
    expected = poisoned.clone()
    expected[top_benign] = True
    assert torch.equal(jenks_upper(scores, inclusive=True), expected)


def test_top_k_and_rho_control_channels_per_layer():
    f, slices, poisoned = synthetic_features()
    _, kept = channel_scores(f, slices, poisoned, ~poisoned, 3.0, rho=0.1, top_k=None)
    assert len(kept) == 6  # ceil(2.5) = 3 per layer
    _, kept = channel_scores(f, slices, poisoned, ~poisoned, 3.0, rho=0.1, top_k=2)
    assert len(kept) == 4


def test_discrepancy_uses_poison_max_minus_benign_mean_plus_beta_std():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 10.0], [0.0, 10.0]])
    poison, benign = torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([0, 0, 1, 1]).bool()
    scores, kept = channel_scores(f, [slice(0, 2)], poison, benign, beta=3.0, rho=0.5, top_k=None)
    # channel 0: max 3 - (0 + 3*0) = 3; channel 1: 0 - (10 + 0) = -10 -> keep channel 0
    assert kept.tolist() == [0] and scores.tolist() == [1.0, 3.0, 0.0, 0.0]


def test_lga_ascends_below_gamma_and_descends_above():
    logits = torch.tensor([[4.0, 0.0]], requires_grad=True)
    y = torch.tensor([0])
    loss = lga_loss(0.5, batch_mean=True)(logits, y, torch.tensor([0]))
    assert loss.item() < 0  # the CE is ~0.018 < gamma: the sign flips
    loss.backward()
    assert logits.grad[0, 0] > 0  # ascent: pushes the correct logit down
    hard = torch.tensor([[0.0, 4.0]], requires_grad=True)
    lga_loss(0.5, batch_mean=True)(hard, y, torch.tensor([0])).backward()
    assert hard.grad[0, 0] < 0  # ordinary descent above gamma


def test_selective_loss_ascends_only_on_isolated_samples_still_predicted_as_their_label():
    poisoned = torch.tensor([True, True, False])
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])  # sample 0: isolated, still predicted 0 -> ascent
    loss = selective_loss(poisoned, lam=1.0)(logits, y, torch.arange(3))  # 1: unlearned -> 0
    loss.backward()
    assert logits.grad[0, 0] > 0  # ascent
    assert torch.all(logits.grad[1] == 0)  # no longer predicted as its label: contributes nothing
    assert logits.grad[2, 0] < 0  # benign: descent


def test_a_benign_outlier_in_the_seed_drags_the_max_but_not_the_median():
    f, slices, poisoned = synthetic_features()
    seed = poisoned.clone()
    seed[poisoned.nonzero().flatten()[3:]] = False  # 3 known poisoned samples ...
    outlier = (~poisoned).nonzero().flatten()[0]
    seed[outlier] = True  # ... and one easy benign image, very bright on channel 12
    f[outlier, 12] = 50.0
    benign = ~poisoned & ~seed & (torch.arange(300) < 150)
    _, kept_max = channel_scores(f, slices, seed, benign, 3.0, 0.04, None, seed_quantile=1.0)
    _, kept_median = channel_scores(f, slices, seed, benign, 3.0, 0.04, None, seed_quantile=0.5)
    assert 12 in kept_max.tolist()  # Eq. 4's max follows the outlier
    assert sorted(kept_median.tolist()) == [7, 28]


def test_the_90th_percentile_ignores_a_benign_outlier_and_keeps_a_seed_that_is_80_percent_benign():
    """q = 0.9 over a 20-sample seed skips its top two values per channel (an outlier is one of
    them) and stays on a trigger channel while more than two seed samples carry the trigger."""
    from benchmark.isolation import channel_discrepancy

    f, slices, poisoned = synthetic_features(n_poison=30)
    idx_p, idx_b = poisoned.nonzero().flatten(), (~poisoned).nonzero().flatten()
    benign = ~poisoned & (torch.arange(300) >= 150)
    outlier_seed = torch.zeros(300, dtype=torch.bool)
    outlier_seed[idx_p[:19]] = True
    outlier_seed[idx_b[0]] = True  # one benign image in the seed, very bright on channel 12
    f[idx_b[0], 12] = 50.0
    for q, want in ((1.0, 12), (0.9, 7)):
        _, kept = channel_scores(f, slices, outlier_seed, benign, 3.0, 0.04, None, seed_quantile=q)
        assert kept[0].item() == want
    faulty = torch.zeros(300, dtype=torch.bool)  # Table 3's 80% fault ratio: 4 poisoned of 20
    faulty[idx_p[:4]] = True
    faulty[idx_b[1:17]] = True
    for q, separated in ((0.9, True), (0.5, False)):
        d = channel_discrepancy(f, faulty, benign, 3.0, q)
        others = torch.cat([d[:7], d[8:28], d[29:]])
        assert bool(min(d[7], d[28]) > others.max() + 2.0) is separated


def test_fault_ratio_seed_has_the_exact_share_of_benign_samples():
    from defenses.pipd import faulty_seed

    n, k = 1000, 20
    truth = torch.zeros(n, dtype=torch.bool)
    truth[::10] = True  # 100 poisoned
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # a loss ranking
    benign_seed = torch.zeros(n, dtype=torch.bool)
    benign_seed[order[-200:]] = True
    for ratio in (0.0, 0.2, 0.8):
        seed = faulty_seed(order, k, benign_seed, truth, ratio, seed=0)
        assert seed.sum() == k and (seed & ~truth).sum() == round(ratio * k)
        assert not (seed & benign_seed).any()
        poisoned_by_loss = order[truth[order]]
        assert torch.equal(seed[poisoned_by_loss[:k - round(ratio * k)]],
                           torch.ones(k - round(ratio * k), dtype=torch.bool))
    assert torch.equal(faulty_seed(order, k, benign_seed, truth, 0.4, seed=3),
                       faulty_seed(order, k, benign_seed, truth, 0.4, seed=3))


def test_pipd_median_and_q90_are_pipd_with_their_quantile_and_inherit_its_settings():
    from benchmark.config import cell_id, parse_sets, resolve_cell
    from benchmark.registry import UsageError
    from defenses import DEFENSES

    for name, q in (("pipd_median", 0.5), ("pipd_q90", 0.9)):
        c = resolve_cell("quick", "badnets", name, 0, parse_sets(["pipd.rounds=3"]))
        assert c["defense_params"]["seed_quantile"] == q and c["defense_params"]["rounds"] == 3
        assert c["defense_params"]["pre_epochs"] == 8  # the quick preset's pipd settings
        assert issubclass(DEFENSES.get(name), DEFENSES.get("pipd"))
    plain = resolve_cell("quick", "badnets", "pipd", 0, parse_sets(["pipd.seed_quantile=0.9"]))
    assert cell_id(plain) != cell_id(resolve_cell("quick", "badnets", "pipd_q90", 0, []))
    assert resolve_cell("quick", "badnets", "pipd", 0, [])["defense_params"]["seed_quantile"] == 1.0
    with pytest.raises(UsageError, match="seed_quantile must be in"):
        resolve_cell("smoke", "badnets", "pipd", 0, parse_sets(["pipd.seed_quantile=2"]))


def test_the_documented_per_attack_layer_settings_name_real_layers():
    import re
    from pathlib import Path

    from benchmark.models import build_model, conv_feature_layers

    readme = (Path(__file__).parents[1] / "docs" / "implementation.md").read_text()
    documented = set(re.findall(r"layer4\.\d\.\w+", readme))
    assert {"layer4.1.conv2", "layer4.0.conv2", "layer4.1.conv1"} <= documented
    assert documented <= set(conv_feature_layers(build_model("resnet18", 10, width=8)))
