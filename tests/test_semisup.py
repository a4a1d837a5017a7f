"""SCE, NT-Xent, MixMatch, batched augmentation, and DBD / ASD on cases with a known answer."""

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.augment import StrongAugment, colour_jitter, resized_crop_flip
from benchmark.losses import nt_xent, sce_per_sample
from benchmark.semisup import mixmatch_loss, mixup, sharpen


def test_sce_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    p = torch.softmax(logits, 1)[0]
    ce = -math.log(p[0])
    rce = -(p[1] + p[2]) * math.log(1e-4)  # the one-hot's zeros clamped to 1e-4, log(1) = 0
    assert sce_per_sample(logits, torch.tensor([0]), 0.1, 1.0).item() == pytest.approx(0.1 * ce + rce)


def test_nt_xent_matches_a_direct_computation_and_prefers_matching_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T / 0.5).exp()
    direct = 0.0
    for i in range(8):
        j = (i + 4) % 8
        direct += -math.log(sim[i, j] / (sim[i].sum() - sim[i, i]))
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(direct / 8, rel=1e-5)
    assert nt_xent(z1, z1 + 0.01, 0.5) < nt_xent(z1, z1[torch.tensor([1, 2, 3, 0])], 0.5)
    one_sided = sum(-math.log(sim[i, i + 4] / (sim[i].sum() - sim[i, i])) for i in range(4)) / 4
    assert nt_xent(z1, z2, 0.5, symmetric=False).item() == pytest.approx(one_sided, rel=1e-5)


def test_mixmatch_pieces_match_their_definitions():
    p = torch.tensor([[0.6, 0.4]])
    assert torch.allclose(sharpen(p, 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))
    x = torch.tensor([[0.0], [10.0]])
    y = torch.eye(2)
    g = torch.Generator().manual_seed(0)
    mx, my, lam = mixup(x, y, 0.75, g)
    assert lam >= 0.5 and torch.allclose(my.sum(1), torch.ones(2))
    for i in range(2):  # each mix is lam * itself + (1 - lam) * a partner, the same for x and y
        partner = 1 - i if my[i, 1 - i] > 0 else i
        assert mx[i].item() == pytest.approx(lam * x[i].item() + (1 - lam) * x[partner].item())
    logits_x, tx = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    logits_u, tu = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    lx = -math.log(torch.softmax(logits_x, 1)[0, 0].item())
    assert mixmatch_loss(logits_x, tx, logits_u, tu, 2.0).item() == pytest.approx(lx + 2.0 * 0.25)


def test_batched_augmentation_draws_per_image_parameters():
    x = torch.rand(1, 3, 16, 16).expand(6, 3, 16, 16).contiguous()
    g = torch.Generator().manual_seed(0)
    out = StrongAugment()(x, g)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 6  # six different results
    full = resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, gen=g)
    assert torch.allclose(full, x, atol=1e-5)  # the whole image, unflipped: unchanged
    flipped = resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0, gen=g)
    assert torch.allclose(flipped, x.flip(3), atol=1e-5)
    assert torch.equal(colour_jitter(x, p=0.0, gen=g), x)


def colour_classes(n_per_class=16, n_poison=12, seed=0):
    """Colour-coded classes (one hue each) plus images of other classes with a white patch,
    labelled 0: a representation of the image content separates them from class 0."""
    from benchmark.data import ImageSet
    from tests.conftest import synthetic_images

    x, y = synthetic_images(n_per_class, 16, seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    victims = (y != 0).nonzero().flatten()
    idx = victims[torch.randperm(len(victims), generator=g)[:n_poison]]
    x[idx, :, -2:, -2:] = 255
    y = y.clone()
    y[idx] = 0
    truth = torch.zeros(len(y), dtype=torch.bool)
    truth[idx] = True
    return ImageSet(x, y, [str(i) for i in range(10)]), truth


def test_dbd_labels_exactly_the_lower_half_and_leaves_the_poisoned_unlabelled(tmp_path):
    from tests.test_competitors import context, run

    train, truth = colour_classes()
    ctx = context(train, tmp_path, epochs=2)
    # 4 SimCLR epochs: at 2 the representation is borderline and the share below depends on the
    # CPU's float rounding (0.58 on an AVX2 EPYC); at 4 it is 1.0 there at seeds 0 and 1
    res = run("dbd", ctx, simclr_epochs=4, simclr_batch=64, head_epochs=60, head_lr=0.01,
              semi_epochs=1, semi_iterations=2, semi_batch=16)
    assert int(res.isolated.sum()) == len(truth) - len(truth) // 2  # 50% labelled
    lowest = res.scores.argsort()[:len(truth) // 2]
    assert not res.isolated[lowest].any()  # the labelled half is the lowest-SCE half
    assert res.isolated[truth].float().mean() >= 0.7  # mislabelled content: high SCE (chance: 0.5)
    assert res.info["self_supervised_model"] == "trained"
    again = run("dbd", ctx, simclr_epochs=4, simclr_batch=64, head_epochs=1, semi_epochs=1,
                semi_iterations=1, semi_batch=16)
    assert again.info["self_supervised_model"] == "reused from cache"


def test_dbd_lambda_u_ramp_starts_where_the_reference_does_at_every_scale():
    from benchmark.semisup import MixMatch
    from benchmark.train import Trainer
    from defenses.dbd import DBDParams

    tr = Trainer((0.5,), (0.5,), device="cpu")
    for semi_epochs in (190, 10):  # the reference's, the quick preset's
        p = DBDParams(semi_epochs=semi_epochs)
        mix = MixMatch(tr, torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2,
                       p.mixmatch(rampup=p.semi_epochs), steps_per_epoch=19, epoch_offset=p.ramp_offset())
        assert mix.weight() == pytest.approx(15 * 10 / 190)  # the reference's first step: 10/190
        mix.done = 19 * semi_epochs * 180 // 190  # fine-tuning epoch 180 of 190, scaled
        assert mix.weight() == pytest.approx(15.0)
        mix.done -= 19
        assert mix.weight() < 15.0  # still ramping one epoch earlier


def test_asd_pool_follows_its_schedule_and_keeps_the_trusted_seed(tmp_path):
    from defenses.asd import class_aware_pool

    losses = torch.arange(40, dtype=torch.float)
    labels = torch.arange(40) % 4
    trusted = torch.zeros(40, dtype=torch.bool)
    trusted[[36, 37]] = True  # high-loss trusted samples stay in the pool
    pool = class_aware_pool(losses, labels, trusted, 2, 4)
    assert pool.sum() == 2 + 4 * 2 and pool[[36, 37]].all()
    assert set(pool.nonzero().flatten().tolist()) == {36, 37, 0, 4, 1, 5, 2, 6, 3, 7}


def test_asd_stage1_grows_at_the_reference_rate_per_iteration_at_every_preset():
    """10 a class every 5 x 1024 iterations: the reference's epochs 5, 10, ... at full; at
    quick's 160 iterations an epoch, no growth within stage 1's 960 iterations (a growth per
    epoch would add 10 a class every 160)."""
    from benchmark.config import resolve_cell
    from defenses.asd import ASDParams, stage1_growth

    def growth(preset: str) -> list[int]:
        p = ASDParams(**resolve_cell(preset, "badnets", "asd", 0, [])["defense_params"])
        return [stage1_growth(e, p) for e in range(round(p.stage1 * p.epochs))]

    full = growth("full")
    assert len(full) == 60 and full[:11] == [0] * 5 + [10] * 5 + [20] and full[-1] == 110
    assert growth("quick") == [0] * 6
    p = ASDParams(iterations=512)  # half an epoch's iterations: growth every 10 epochs
    assert [stage1_growth(e, p) for e in (9, 10, 19, 20)] == [0, 10, 10, 20]


def asd_context(tmp_path, seed=0):
    from tests.test_competitors import context

    train, truth = colour_classes(seed=seed)
    ctx = context(train, tmp_path, seed=seed)
    clean = (~truth).nonzero().flatten()
    ctx.trusted_rows = torch.cat([clean[train.labels[clean] == c][:2] for c in range(10)])
    ctx.trusted, ctx.trusted_source = train.subset(ctx.trusted_rows), "test rows"
    return ctx, truth


def test_asd_stages_pool_sizes_and_excluded_trusted_rows(tmp_path):
    from tests.test_competitors import run

    ctx, truth = asd_context(tmp_path)
    res = run("asd", ctx, epochs=8, iterations=2, batch=16, grow=3, grow_every_iterations=2,
              stage1=0.5, stage2=0.75, seed_per_class=2)
    stages = [(c["stage"], c["pool"]) for c in res.curves["mixmatch"]]
    assert [s for s, _ in stages] == [1, 1, 1, 1, 2, 2, 3, 3]
    assert [n for _, n in stages[:4]] == [20, 20 + 30, 20 + 60, 20 + 90]  # seed + 3 per class an epoch
    assert all(n == len(truth) // 2 for _, n in stages[4:])
    # stage 1 forces the trusted seed into the pool (see the unit test above); stages 2 and 3
    # rank every sample, as the reference; the trusted rows never count in TPR/FPR
    assert res.excluded.sum() == 20 and res.excluded[ctx.trusted_rows].all()
    # the scores are what the last (meta) split ranked: the isolated half holds the top scores
    assert res.scores[res.isolated].min() >= res.scores[~res.isolated].max()


def test_asd_leaves_the_poisoned_outside_the_loss_guided_pool(tmp_path):
    from tests.test_competitors import run

    ctx, truth = asd_context(tmp_path)
    res = run("asd", ctx, epochs=6, iterations=12, batch=32, grow=3, grow_every_iterations=2, lr=0.005,
              seed_per_class=2, stage1=0.67, stage2=1.0)  # stages 1 and 2 only
    assert res.isolated[truth].float().mean() >= 0.7  # chance: 0.5
