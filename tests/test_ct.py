"""Confusion Training (issue 44): its label shifts, distillation, likelihood ratio and class
rule on cases worked out by hand, and a small run through the defense."""

import math

import pytest
import torch

from benchmark.data import ImageSet
from benchmark.registry import UsageError
from benchmark.train import TrainConfig, Trainer
from defenses import DEFENSES, DefenseContext
from defenses.ct import CTParams, confusion_shifts, distill, flagged_classes, likelihood_ratio


def test_confusion_shifts_never_keep_the_models_label():
    # r bumps past every zero shift: (r + i) mod 3 for i = 0..5 with r = 1, 1, 2, 2, 3, 3
    assert confusion_shifts(6, 3) == [1, 2, 1, 2, 1, 2]
    assert 0 not in confusion_shifts(100, 10)


def test_distill_keeps_the_lowest_losses_and_tops_up_every_class_to_its_floor():
    labels = torch.arange(3).repeat_interleave(100)
    losses = torch.cat([torch.arange(100.0), 100 + torch.arange(100.0), 200 + torch.arange(100.0)])
    kept = distill(losses, labels, 0.1, 50)  # the 30 lowest are class 0's; floors: 100 // 50 = 2
    assert kept.tolist() == [*range(30), 100, 101, 200, 201]
    # a set too small for the ratio keeps its two lowest (a fit's BatchNorm needs two)
    small = distill(torch.tensor([3.0, 1.0, 2.0, 5.0]), torch.zeros(4, dtype=torch.long), 0.04, 50)
    assert small.tolist() == [1, 2]


def test_the_likelihood_ratio_and_the_class_rule():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(200, 2, generator=g, dtype=torch.float64)
    same = torch.arange(200) < 100  # the two groups from one distribution: ratio near 1
    assert likelihood_ratio(spread, same) < 1.2
    planted = torch.cat([spread[:180], 8 + 0.1 * torch.randn(20, 2, generator=g, dtype=torch.float64)])
    tight = torch.arange(200) >= 180  # a tight, far group: the two-group model wins by far
    assert likelihood_ratio(planted, tight) > 2
    assert likelihood_ratio(planted, torch.arange(200) == 0) == 1.0  # a group of one
    assert flagged_classes({0: 5.0, 1: 1.2, 2: 1.6}, 1.5, 2.0) == [0]
    assert flagged_classes({0: 1.6, 1: 1.2}, 1.5, 2.0) == [0]
    assert flagged_classes({0: 1.4, 1: 1.2}, 1.5, 2.0) == []
    assert flagged_classes({0: 3.0, 1: 2.5}, 1.5, 2.0) == [0, 1]
    # a NaN ratio (both groups' Gaussians singular) makes the largest NaN, whatever the order
    assert flagged_classes({0: 1.8, 1: math.nan}, 1.5, 2.0) == []
    assert flagged_classes({0: math.nan, 1: 2.5}, 1.5, 2.0) == [1]
    with pytest.raises(UsageError, match="lambdas needs 6"):
        CTParams(lambdas=[20.0])


def test_a_small_confusion_training_run_distils_and_leaves_its_trusted_rows_out():
    from benchmark.models import build_model

    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 200, (120, 3, 16, 16), dtype=torch.uint8, generator=g)
    images[:12] = 255  # a white "trigger" labelled 0
    labels = torch.cat([torch.zeros(12, dtype=torch.long), torch.arange(108) % 4])
    train = ImageSet(images, labels, [str(i) for i in range(4)])
    ctx = DefenseContext(train=train, make_model=lambda: build_model("resnet18", 4, width=4),
                         trainer=Trainer((0.5,) * 3, (0.25,) * 3, device="cpu", channels_last=False),
                         train_cfg=TrainConfig(), seed=0, cache=None, cache_key={"test": 1})
    backdoored = build_model("resnet18", 4, width=4).eval()
    ctx.backdoored_model = lambda: (backdoored, [], True)
    ctx.trusted_rows = torch.arange(100, 120)
    ctx.trusted = train.subset(ctx.trusted_rows)
    cls = DEFENSES.get("ct")
    res = cls(cls.Params(pretrain_epochs=[1] * 6, iterations=[6] * 6, batch_size=8)).run(ctx)
    sizes = res.info["distilled_sizes"]
    # the 20 trusted training rows are the clean set, never part of D_0 or flagged
    assert sizes[0] == 100 and sizes[1] >= 50 and sizes == sorted(sizes, reverse=True)
    assert torch.equal(res.excluded, torch.arange(120) >= 100) and res.model is backdoored
    assert not res.isolated[100:].any()
    assert set(res.info["class_ratios"]) == {"0", "1", "2", "3"}
    flagged = set(res.info["flagged_classes"])
    assert set(train.labels[res.isolated].tolist()) <= flagged


def test_the_gaussian_log_density_is_scipys_and_allows_a_singular_covariance():
    stats = pytest.importorskip("scipy.stats")
    from defenses.ct import gaussian_logpdf

    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    mean, cov = x.mean(0), torch.cov(x.T) + 0.001
    expected = stats.multivariate_normal.logpdf(x.numpy(), mean.numpy(), cov.numpy(), allow_singular=True)
    assert torch.allclose(gaussian_logpdf(x, mean, cov), torch.from_numpy(expected))
    same = torch.ones(5, 2, dtype=torch.float64)  # identical features: cov + 0.001 is singular
    flat = torch.cov(same.T) + 0.001
    expected = stats.multivariate_normal.logpdf(x.numpy(), same.mean(0).numpy(), flat.numpy(),
                                                 allow_singular=True)
    assert torch.allclose(gaussian_logpdf(x, same.mean(0), flat), torch.from_numpy(expected))
