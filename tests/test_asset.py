"""ASSET (issue 44) and the robust statistics it flags by, on cases with a known answer."""

import math

import pytest
import torch
from torch import nn

from benchmark.data import ImageSet
from benchmark.robust import adjusted_outlyingness, medcouple
from benchmark.train import TrainConfig, Trainer
from defenses import DEFENSES, DefenseContext
from defenses.asset import tail_threshold


def test_medcouple_by_hand_on_symmetric_data_with_ties_and_on_an_exponential_sample():
    # median 3.5; the 9 pairs (above, below) give -2/3, -1/2, 0, 4/9, 5/8, 37/51 ...: median 5/8
    assert medcouple(torch.tensor([1.0, 2, 3, 4, 10, 20])) == pytest.approx(0.625)
    assert medcouple(torch.tensor([1.0, 2, 3, 3, 3, 4, 5])) == 0.0  # symmetric, ties at the median
    assert medcouple(torch.tensor([-5.0, -1, 0, 1, 5])) == 0.0
    exp = torch.empty(3000, dtype=torch.float64).exponential_(generator=torch.Generator().manual_seed(0))
    assert medcouple(exp) == pytest.approx(1 / 3, abs=0.03)  # the exponential's medcouple is 1/3
    assert medcouple(-exp) == pytest.approx(-medcouple(exp))


def test_adjusted_outlyingness_flags_a_planted_far_group_only():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(480, generator=g) * 0.2, 0.9 + torch.rand(32, generator=g) * 0.1])
    flagged = adjusted_outlyingness(x) > 2
    assert flagged[480:].all() and not flagged[:480].any()


def test_tail_threshold_is_the_references_formula_over_scikit_learns_gaussian():
    mixture = pytest.importorskip("sklearn.mixture")

    g = torch.Generator().manual_seed(2)
    scores = torch.cat([torch.rand(900, generator=g), 5 + torch.rand(100, generator=g)]).double()
    half = scores.sort().values[(len(scores) - 1) // 2]
    low = scores[scores <= half].numpy().reshape(-1, 1)
    gm = mixture.GaussianMixture(n_components=1, covariance_type="full").fit(low)
    sigma, mu = math.sqrt(gm.covariances_.item()), gm.means_.item()
    tail = sigma * math.sqrt(-2 * math.log(1e-6) * sigma * math.sqrt(2 * math.pi))
    expected = (tail + mu) / gm.weights_.item()
    assert tail_threshold(scores, 1e-6) == pytest.approx(expected, rel=1e-6)
    assert (scores[900:] >= expected).all()  # the far group (and the top of the uniform bulk)


def test_the_offset_mlp_singles_out_the_rows_of_a_batch_far_from_the_clean_features():
    """At the reference's settings (100 steps of Adam 1e-4) the MLP hardly learns, and what
    sets a row apart is how far its features lie from the clean batch's: rows moved far (a
    backdoor's large activations) get outputs beyond the skewed fences, the rest stay inside.
    Over four initialisations every row selected is a planted one, and most select all 25."""
    from defenses.asset import Asset, AssetParams

    complete = 0
    for seed in range(4):
        g = torch.Generator().manual_seed(3 + seed)
        clean = torch.randn(512, 64, generator=g).relu()
        batch = torch.randn(512, 64, generator=g).relu()
        batch[:25] += 20.0  # planted: 25 rows far from the clean features
        torch.manual_seed(seed)
        scores = Asset(AssetParams()).offset_scores(batch, clean, AssetParams())
        chosen = (adjusted_outlyingness(scores) > 2).nonzero().flatten()
        assert (chosen < 25).all()
        complete += len(chosen) == 25
    assert complete >= 2


def test_asset_runs_on_a_context_and_leaves_its_trusted_rows_out():
    from benchmark.models import build_model

    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 255, (96, 3, 16, 16), dtype=torch.uint8, generator=g)
    train = ImageSet(images, torch.arange(96) % 4, [str(i) for i in range(4)])
    ctx = DefenseContext(train=train, make_model=lambda: build_model("resnet18", 4, width=4),
                         trainer=Trainer((0.5,) * 3, (0.25,) * 3, device="cpu", channels_last=False),
                         train_cfg=TrainConfig(), seed=0, cache=None, cache_key={"test": 1})
    backdoored = build_model("resnet18", 4, width=4).eval()
    ctx.backdoored_model = lambda: (backdoored, [], True)
    ctx.trusted_rows = torch.arange(32)
    ctx.trusted = train.subset(ctx.trusted_rows)
    cls = DEFENSES.get("asset")
    res = cls(cls.Params(batch_size=32, mlp_steps=5)).run(ctx)
    assert res.model is backdoored and res.scores.shape == (96,)
    assert torch.equal(res.excluded, torch.arange(96) < 32)
    # the poisoned set its batches and its threshold read is the 64 rows not given as trusted
    assert res.info["batches"] == 2 and res.info["n_trusted"] == 32
    assert res.info["threshold"] == pytest.approx(tail_threshold(res.scores[32:], cls.Params().eps))
    assert torch.equal(res.isolated, res.scores >= res.info["threshold"])
    assert isinstance(backdoored.layer1[0].bn1, nn.BatchNorm2d) and not backdoored.training
