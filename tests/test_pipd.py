import torch

from defenses.pipd import channel_scores, lga_loss, selective_loss


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
