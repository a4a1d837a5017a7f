"""Per-attack checks that the trigger is the one the method defines."""

import math

import pytest
import torch
import torch.nn.functional as F

from attacks.refool import Refool
from attacks.triggers import to_uint8, watermark_mask
from attacks.wanet import identity_grid
from benchmark.data import ImageSet
from benchmark.registry import UsageError
from tests.attack_helpers import make_attack, make_set, poisoned


def flat(value: int, n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.full((n, 3, size, size), value, dtype=torch.uint8)


# ---------------------------------------------------------------- Blended
def test_blended_is_an_alpha_blend_with_a_seeded_fixed_pattern():
    atk = make_attack("blended")
    x = make_set(4).images
    pattern = atk.pattern(3, 32, 32)
    expected = to_uint8(0.8 * x.float() / 255 + 0.2 * pattern.float() / 255)
    assert torch.equal(atk.apply_trigger(x), expected)
    assert torch.equal(pattern, make_attack("blended").pattern(3, 32, 32))  # fixed
    assert not torch.equal(pattern, make_attack("blended", pattern_seed=1).pattern(3, 32, 32))
    assert pattern.float().std() > 30  # a real pattern, not a flat colour


def test_blended_uses_a_users_trigger_image(tmp_path):
    from PIL import Image
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "t.png")
    out = make_attack("blended", trigger_path=str(tmp_path / "t.png"), alpha=0.5).apply_trigger(flat(0))
    assert (out[:, 0] == 128).all() and (out[:, 1:] == 0).all()


# ---------------------------------------------------------------- SIG
def test_sig_adds_a_horizontal_sine_of_the_given_amplitude():
    atk = make_attack("sig", delta=20.0, freq=6)
    out = atk.apply_trigger(flat(128)).float() - 128
    j = torch.arange(32, dtype=torch.float32)
    expected = (20 * torch.sin(2 * math.pi * j * 6 / 32)).round()
    assert torch.allclose(out[0, 0, 0], expected, atol=1)  # varies along the width ...
    assert (out == out[:, :, :1, :]).all()  # ... and is the same on every row and channel
    assert out.abs().max() <= 20.5


# ---------------------------------------------------------------- Trojan
def test_trojan_square_is_a_coloured_patch_bottom_right_only():
    atk = make_attack("trojan")
    x = flat(100)
    out = atk.apply_trigger(x)
    changed = (out != x).any(1)[0]
    assert changed[27:, 27:].float().mean() > 0.8 and not changed[:27].any() and not changed[:, :27].any()
    patch = out[0, :, 27:, 27:]
    assert len(torch.unique(patch.flatten(1), dim=1)) > 1  # coloured, not one flat value


def test_trojan_watermark_blends_only_inside_the_logo():
    atk = make_attack("trojan", variant="watermark")
    x = flat(100)
    out = atk.apply_trigger(x)
    mask = watermark_mask(32, 32).bool()
    assert torch.equal(out[:, :, ~mask], x[:, :, ~mask])
    assert (out[:, :, mask] != 100).float().mean() > 0.8
    assert mask.float().mean() < 0.35  # a logo, not the whole image


def test_trojan_optimisation_drives_the_chosen_neurons_toward_the_target():
    train = make_set(200)
    plain, _ = poisoned("trojan", train, optimize_steps=0)
    opt, _ = poisoned("trojan", train, optimize_steps=20, ref_epochs=1, target_value=50.0)
    assert not torch.equal(opt.pattern(3, 32, 32), plain.pattern(3, 32, 32))
    info = opt.optimisation
    assert len(info["neurons"]) == 2 and info["steps"] == 20
    assert abs(info["activation_after"] - 50) < abs(info["activation_before"] - 50)
    # outside the patch nothing changes, whatever the optimisation did
    x = flat(100)
    assert torch.equal(opt.apply_trigger(x)[:, :, :27], x[:, :, :27])


def test_trojan_picks_the_best_connected_neuron_and_saturates_what_feeds_it():
    """A known answer: features = per-channel means, the output layer's column 2 is the heaviest,
    so the optimisation must pick neuron 2 and push only channel 2 of the patch to 255."""
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    with torch.no_grad():
        model[2].weight.fill_(0.1)
        model[2].weight[:, 2] = 1.0
    atk = make_attack("trojan", neurons=1, optimize_steps=60, target_value=100.0)
    before = atk.pattern(3, 32, 32)
    pattern = atk.optimise(model, make_set(64), 3, 32, 32)
    assert atk.optimisation["neurons"] == [2]
    assert (pattern[2, 27:, 27:] >= 240).all()  # driven toward saturation (tanh: asymptotically)
    assert (pattern[2, 27:, 27:].float().mean() > before[2, 27:, 27:].float().mean() + 50)
    # no gradient reaches the other channels (up to the tanh start's clamp to [0.01, 0.99])
    assert (pattern[:2].int() - before[:2].int()).abs().max() <= 3


def test_trojan_optimised_trigger_is_cached_and_reused(tmp_path):
    train = make_set(200)
    first, _ = poisoned("trojan", train, cache_root=tmp_path)
    assert list((tmp_path / "triggers").glob("*.pt"))
    again = make_attack("trojan", cache_root=tmp_path)
    again.ctx.trainer = None  # a second optimisation (or reference training) would fail
    again.prepare(train)
    assert torch.equal(again.pattern(3, 32, 32), first.pattern(3, 32, 32))


# ---------------------------------------------------------------- WaNet
def test_wanet_warp_is_smooth_small_and_keeps_flat_images():
    atk = make_attack("wanet", k=4, s=0.5)
    grid = atk.grid(32, 32)
    disp = (grid - identity_grid(32, 32)) * 16  # in pixels
    assert 0.05 < disp.abs().max() < 2.0  # s = 0.5: sub-pixel to ~1 px shifts
    # smooth: away from the clamped border, neighbouring displacements differ by far less
    # than the displacement itself
    inner = disp[:, 2:-2, 2:-2]
    assert (inner[:, 1:] - inner[:, :-1]).abs().max() < 0.35 * inner.abs().max()
    assert (inner[:, :, 1:] - inner[:, :, :-1]).abs().max() < 0.35 * inner.abs().max()
    assert torch.equal(atk.apply_trigger(flat(77)), flat(77))
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(2, 3, 32, 32).contiguous()
    assert ((atk.apply_trigger(ramp).float() - ramp.float()).abs().max()) <= 20


def test_wanet_cross_samples_are_twice_the_poisoned_and_warped_differently():
    train = make_set(400)
    atk, ps = poisoned("wanet", train)
    assert int(ps.cover_mask.sum()) == 2 * int(ps.poison_mask.sum())
    cover = ps.cover_mask.nonzero().flatten()
    assert not torch.equal(ps.images[cover], atk.apply_trigger(train.images[cover]))


# ---------------------------------------------------------------- CL
def test_cl_perturbation_within_eps_plus_four_corner_pattern():
    train = make_set(400, low=40, high=216)
    atk, ps = poisoned("cl", train, eps=8.0)
    idx = ps.poison_mask.nonzero().flatten()
    diff = ps.images[idx].float() - train.images[idx].float()
    inner = torch.ones(32, 32, dtype=torch.bool)
    for rows, cols in ((slice(0, 3), slice(0, 3)), (slice(0, 3), slice(29, 32)),
                       (slice(29, 32), slice(0, 3)), (slice(29, 32), slice(29, 32))):
        inner[rows, cols] = False
        corner = ps.images[idx][:, :, rows, cols]
        assert ((corner == 0) | (corner == 255)).all()  # the black/white pattern
    assert diff[:, :, inner].abs().max() <= 8
    assert (diff[:, :, inner] != 0).float().mean() > 0.5  # PGD really moved the pixels
    # the perturbation makes the target-class images harder for the reference model
    model = atk.model
    tr = atk.ctx.trainer
    y = torch.zeros(len(idx), dtype=torch.long)
    before = F.cross_entropy(tr.logits(model, train.images[idx]), y)
    after = F.cross_entropy(tr.logits(model, atk.perturb(train.images[idx], y)), y)
    assert after > before


def test_cl_corner_pattern_is_the_originals_mirrored():
    atk = make_attack("cl")
    out = atk.apply_trigger(flat(128, 1))[0, 0]
    original = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(out[29:, 29:], original)  # bottom right as is
    assert torch.equal(out[29:, :3], original.flip(1))  # bottom left: mirrored left-right
    assert torch.equal(out[:3, 29:], original.flip(0))  # top right: mirrored up-down
    assert torch.equal(out[:3, :3], original.flip(0).flip(1))
    assert (out[3:29] == 128).all() and (out[:, 3:29] == 128).all()
    board = make_attack("cl", pattern="checkerboard").apply_trigger(flat(128, 1))[0, 0]
    assert not torch.equal(board[29:, 29:], original)


# ---------------------------------------------------------------- A-Patch
def test_adaptive_patch_equal_shares_each_trigger_at_its_own_opacity():
    train = make_set(400)
    atk, ps = poisoned("adaptive_patch", train)
    kinds, alphas = atk.params.triggers, atk.params.train_alphas
    assert alphas == [0.5, 0.2, 0.5, 0.3]  # the original's CIFAR-10 opacities
    masks, patterns = atk.bank(kinds, 3, 32, 32)
    idx = ps.poison_mask.nonzero().flatten()
    which = []
    for i in idx:
        changed = (ps.images[i] != train.images[i]).any(0)
        # the trigger whose region holds every changed pixel (the smallest such region)
        fits = [k for k in range(4) if not changed[~masks[k, 0].bool()].any()]
        k = min(fits, key=lambda j: int(masks[j].sum()))
        expected = to_uint8((1 - alphas[k] * masks[k]) * train.images[i].float() / 255
                            + alphas[k] * masks[k] * patterns[k].float() / 255)
        # blended at its own opacity, nowhere else (to within float32 rounding)
        assert (ps.images[i].int() - expected.int()).abs().max() <= 1
        which.append(k)
    counts = torch.bincount(torch.tensor(which), minlength=4)
    assert counts.min() > 0 and counts.max() - counts.min() <= 1  # equal shares
    assert int(ps.cover_mask.sum()) == 2 * len(idx)


def test_adaptive_blend_masks_half_the_pieces_per_image_and_tests_the_whole_trigger():
    """The toolbox's CIFAR-10 settings: 16 pieces, 8 masked per poisoned or cover image (each
    its own), alpha 0.15 where kept and nowhere else; test: the whole pattern at 0.2."""
    train = make_set(2000, low=0, high=256)
    atk, ps = poisoned("adaptive_blend", train)
    p = atk.params
    assert (p.rate, p.cover_rate, p.alpha, p.test_alpha, p.pieces) == (0.003, 0.003, 0.15, 0.2, 16)
    idx, cover = ps.poison_mask.nonzero().flatten(), ps.cover_mask.nonzero().flatten()
    assert len(idx) == len(cover) == 6 and not (ps.poison_mask & ps.cover_mask).any()
    assert (ps.labels[idx] == 0).all() and torch.equal(ps.labels[cover], train.labels[cover])
    pattern = atk.pattern(3, 32, 32).float() / 255
    kept = []
    for i in torch.cat([idx, cover]):
        changed = (ps.images[i] != train.images[i]).any(0)
        share = changed.view(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, 64).float().mean(1)
        assert ((share == 0) | (share > 0.5)).all()  # a piece is blended as a whole or not at all
        piece = (share > 0.5).view(4, 1, 4, 1).expand(4, 8, 4, 8).reshape(32, 32)
        full = to_uint8(0.85 * train.images[i].float() / 255 + 0.15 * pattern)
        assert (ps.images[i][:, piece].int() - full[:, piece].int()).abs().max() <= 1
        assert torch.equal(ps.images[i][:, ~piece], train.images[i][:, ~piece])
        kept.append(tuple((share > 0.5).tolist()))
    assert all(sum(k) == 8 for k in kept) and len(set(kept)) > 1  # half each, not the same half
    out = atk.apply_trigger(train.images[:4])
    assert torch.equal(out, to_uint8(0.8 * train.images[:4].float() / 255 + 0.2 * pattern))
    again, _ = poisoned("adaptive_blend", train)
    assert torch.equal(again.poison_train(train).images, ps.images)  # seeded
    with pytest.raises(UsageError, match="square number"):
        make_attack("adaptive_blend", pieces=12)
    with pytest.raises(UsageError, match="grid of pieces"):
        make_attack("adaptive_blend", pieces=25).check(train)


def test_tact_relabels_the_source_class_only_and_covers_with_classes_5_and_7():
    train = make_set(2000, low=0, high=256)
    atk, ps = poisoned("tact", train)
    idx, cover = ps.poison_mask.nonzero().flatten(), ps.cover_mask.nonzero().flatten()
    assert len(idx) == len(cover) == 6  # 0.003 of 2,000 each
    assert (train.labels[idx] == 1).all() and (ps.labels[idx] == 0).all()
    assert set(train.labels[cover].tolist()) <= {5, 7} and torch.equal(ps.labels[cover], train.labels[cover])
    # the toolbox's trojan square: 8x8, 3 px from the bottom-right corner, pasted as it is
    changed = (ps.images[torch.cat([idx, cover])] != train.images[torch.cat([idx, cover])]).any(1)
    assert not changed[:, :21].any() and not changed[:, :, :21].any() and not changed[:, 29:].any()
    square = ps.images[idx][:, :, 21:29, 21:29]
    assert (square == square[:1]).all() and square.shape[-2:] == (8, 8)
    test = ImageSet(train.images[:100], train.labels[:100], train.classes)
    trig = atk.trigger_test(test)
    assert (trig.labels == 1).all() and len(trig) == int((test.labels == 1).sum())  # ASR: source only
    big = atk.apply_trigger(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    lit = (big[0] != 0).any(0)  # scaled: 16 px, 6 from the edges
    assert not lit[:42].any() and not lit[:, :42].any() and not lit[58:].any()
    assert lit[42:58, 42:58].sum() > 200
    with pytest.raises(UsageError, match="must differ"):
        make_attack("tact", source=0)
    with pytest.raises(UsageError, match="must differ"):
        make_attack("tact", cover_classes=[1, 5])


def test_adaptive_patch_trigger_geometry_and_two_trigger_test():
    """The geometry of the original's trigger images, and its test pair."""
    atk = make_attack("adaptive_patch")
    kinds = ["corner_logo", "large_logo", "four_corner", "square", "corner_logo2"]
    masks, patterns = atk.bank(kinds, 3, 32, 32)
    logo, large, corners, square, logo2 = (m[0].bool() for m in masks)
    assert logo[27:, 27:].all() and int(logo.sum()) == 25  # 5x5, bottom right
    assert large[1:14, 18:31].any() and not large[14:].any() and not large[:, :18].any()
    assert not large[0].any() and not large[:, 31].any() and 120 < int(large.sum()) < 169  # a disc
    assert int(corners.sum()) == 36 and corners[:3, :3].all() and corners[29:, 29:].all()
    assert int(square.sum()) == 64 and square[21:29, 21:29].all()  # 8x8, 3 px from the corner
    assert int(logo2.sum()) == 50 and logo2[27:, :5].all() and logo2[27:, 27:].all()
    assert torch.equal(patterns[4][:, 27:, 27:], patterns[0][:, 27:, 27:])  # one logo, two places
    blue_white = patterns[0][:, 27:, 27:].flatten(1).T.tolist()
    assert {tuple(v) for v in blue_white} <= {(255, 255, 255), (0, 0, 255)}
    for k in range(5):
        assert (patterns[k][:, ~masks[k, 0].bool()] == 0).all()
    # test: the logo in both bottom corners, then the four-corner pattern, full strength
    out = atk.apply_trigger(flat(50))
    assert torch.equal(out[0][:, corners], patterns[2][:, corners])
    assert torch.equal(out[0][:, logo2 & ~corners], patterns[4][:, logo2 & ~corners])
    assert (out[:, :, ~(logo2 | corners)] == 50).all()
    big, _ = atk.bank(["square"], 3, 224, 224)
    assert int(big.sum()) == 56 * 56  # scaled with the image
    with pytest.raises(UsageError, match="valid"):
        make_attack("adaptive_patch", test_triggers=["phoenix"])
    with pytest.raises(UsageError, match="valid"):
        make_attack("adaptive_patch", triggers=["corner_logo2"], train_alphas=[0.5])
    with pytest.raises(UsageError, match="train_alphas"):
        make_attack("adaptive_patch", train_alphas=[0.5])


# ---------------------------------------------------------------- Refool
def test_refool_training_image_pool_is_never_poisoned():
    train = make_set(400)
    atk, ps = poisoned("refool", train, n_reflections=10, n_candidates=20)
    assert len(atk.pool) == 10 and len(atk.pool_rows) == 10 and len(atk.selection["curve"]) == 1
    assert torch.equal(atk.pool, train.images[atk.candidate_rows[atk.selection["chosen"]]])
    assert not ps.poison_mask[atk.pool_rows].any()
    assert torch.equal(ps.images[atk.pool_rows], train.images[atk.pool_rows])
    assert (train.labels[atk.pool_rows] != 0).all()
    assert "never poisoned" in atk.describe()["reflection_source"]


def test_refool_draws_reflections_from_outside_the_training_set():
    train, held = make_set(400), make_set(100, seed=5)
    atk = make_attack("refool", n_reflections=10, n_candidates=20, select_rounds=0)
    atk.ctx.held_out = held
    atk.prepare(train)
    assert len(atk.pool_rows) == 0 and bool(atk.eligible(train).sum()) == bool((train.labels != 0).sum())
    assert all(any(torch.equal(r, h) for h in held.images) for r in atk.pool)
    assert "outside the cell's subset" in atk.describe()["reflection_source"]


def _refool_flat(value: int, **params):
    """A Refool whose pool is one flat reflection of ``value``."""
    atk = make_attack("refool", select_rounds=0, **params)
    atk.pool = torch.full((1, 3, 32, 32), value, dtype=torch.uint8)
    return atk


def test_refool_ghost_composes_in_linear_light():
    """Flat reflection r and image t: the ghost is r, and the result is
    ((1 - a) r^2.2 + a t^2.2)^(1/2.2) with a the transmission weight."""
    atk = _refool_flat(200, mode="ghost", alpha_t=[0.7, 0.7])
    out = atk.reflect(flat(50), torch.zeros(2, dtype=torch.long), torch.Generator().manual_seed(0))
    expected = round(255 * (0.3 * (200 / 255) ** 2.2 + 0.7 * (50 / 255) ** 2.2) ** (1 / 2.2))
    assert (out.int() - expected).abs().max() <= 1
    assert expected > round(0.3 * 200 + 0.7 * 50) + 5  # brighter than the sRGB mix: linear light


def test_refool_ghost_is_the_reflection_plus_a_shifted_copy():
    from attacks.refool import ghost

    r = torch.zeros(1, 1, 32, 32)
    r[0, 0, 16, 16] = 1.0
    out = ghost(r, 4, 4, torch.tensor([0.5]))
    ys, xs = (out[0, 0] > 0.05).nonzero(as_tuple=True)
    assert len(ys) >= 2 and (ys.max() - ys.min()) >= 3 and (xs.max() - xs.min()) >= 3  # two copies


def test_refool_blur_vignette_and_exposure_follow_the_original():
    from attacks.refool import blur, vignette_factor

    f = vignette_factor(560)
    assert len(f) == 560 and abs(float(f.max()) - 1) < 1e-6
    assert abs(float(f[0]) - math.exp(-3 ** 2 / 4)) < 0.005  # sqrt of a Gaussian at 3 sigma
    assert torch.allclose(f, f.flip(0), atol=1e-5)
    impulse = torch.zeros(2, 1, 32, 32)
    impulse[:, 0, 16, 16] = 1.0
    out = blur(impulse, torch.tensor([1.0, 3.0]))
    assert torch.allclose(out.sum((1, 2, 3)), torch.ones(2), atol=1e-4)  # mass kept
    assert out[1, 0, 16, 16] < out[0, 0, 16, 16]  # a larger sigma spreads more
    flat_r = torch.full((1, 3, 32, 32), 0.4)
    assert torch.allclose(blur(flat_r, torch.tensor([2.0])), flat_r, atol=1e-5)
    # blurred mode on a black image: a darkened reflection (vignette <= 1, weight 1 - a/2)
    atk = _refool_flat(200, mode="blur", alpha_t=[0.6, 0.6])
    out = atk.reflect(flat(0, 8), torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(0))
    top = round(255 * (0.7 * (200 / 255) ** 2.2) ** (1 / 2.2))
    assert out.max() <= top + 1
    # the vignette covers the whole 32-px image (backdoor-toolbox's max_image_size 32): bright
    # centre, dark corners, the same shape on every image
    o = out.float()
    assert (o[:, :, 14:18, 14:18].mean() > 3 * o[:, :, :2, :2].mean())
    assert torch.allclose(o / o.amax((1, 2, 3), keepdim=True), o[:1] / o[:1].max(), atol=0.05)


def test_refool_selection_keeps_the_most_effective_reflections(monkeypatch):
    """Candidates of rising brightness; the stub model calls an image 'target' when it is bright,
    so exactly candidates 9-11 succeed. Each round re-tests the best and explores untried ones
    (at least one per round until three successes are known): after 10 rounds of 3, every
    candidate has been tried and the pool must be exactly 9, 10, 11."""
    from benchmark.train import Trainer

    train = make_set(200)
    atk = make_attack("refool", n_reflections=3, n_candidates=12, select_rounds=10,
                      mode="ghost", alpha_t=[0.5, 0.5], select_probes=4)
    cands = torch.stack([torch.full((3, 32, 32), 20 * j, dtype=torch.uint8) for j in range(12)])
    monkeypatch.setattr(Refool, "candidates", lambda self, tr: (cands, "stub"))
    monkeypatch.setattr(Refool, "probe_images", lambda self, tr, g: flat(0, 4))
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: [])
    monkeypatch.setattr(Trainer, "predict",
                        lambda self, model, x: torch.where(x.float().mean((1, 2, 3)) > 120, 0, 1))
    atk.prepare(train)
    assert sorted(atk.selection["chosen"].tolist()) == [9, 10, 11]
    assert atk.selection["weights"].tolist() == [0.0] * 9 + [1.0] * 3
    assert len(atk.selection["curve"]) == 10
    assert torch.equal(atk.pool, cands[atk.selection["chosen"]])


# ---------------------------------------------------------------- Dynamic
def test_dynamic_triggers_are_input_specific_and_the_generator_is_cached(tmp_path, monkeypatch):
    from attacks.dynamic import Dynamic

    train = make_set(200)
    atk = make_attack("dynamic", cache_root=tmp_path)
    atk.prepare(train)
    ps = atk.poison_train(train)
    idx = ps.poison_mask.nonzero().flatten()
    residual = ps.images[idx].float() - train.images[idx].float()
    assert not torch.allclose(residual[0], residual[1], atol=1)  # per-image triggers
    # cross samples: another image's trigger, true label
    assert int(ps.cover_mask.sum()) == len(idx)
    # a second attack object with the same config loads the generator instead of training it
    monkeypatch.setattr(Dynamic, "train_generators", lambda *_: pytest.fail("retrained"))
    again = make_attack("dynamic", cache_root=tmp_path)
    again.prepare(train)
    assert torch.equal(again.poison_train(train).images, ps.images)


def test_dynamic_blends_through_the_originals_soft_mask_threshold():
    from attacks.dynamic import threshold

    t = threshold(torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0]))
    assert t[0] < 1e-3 and t[1] < 0.02 and abs(t[2] - 0.5) < 1e-6 and t[3] > 0.98 and t[4] > 0.999
    train = make_set(60)
    atk = make_attack("dynamic")
    atk.prepare(train)
    x = train.images[:4]
    xn = atk.ctx.trainer.normalize(x.float())
    with torch.no_grad():
        g, m = atk.gen(xn), threshold(atk.mask_net(xn))
    expected = to_uint8(x.float() / 255 + m * (g - x.float() / 255))
    assert (atk.apply_trigger(x).int() - expected.int()).abs().max() <= 1


def test_dynamic_generator_has_the_originals_cifar_shape():
    """3 stages on 32x32: 32 -> 16 -> 8 -> 4 with widths w, 2w, 4w, back up to the input size."""
    from attacks.dynamic import Generator

    gen = Generator(3, None, width=8, stages=3)
    pools = [m for m in gen.net if isinstance(m, torch.nn.MaxPool2d)]
    ups = [m for m in gen.net if isinstance(m, torch.nn.Upsample)]
    assert len(pools) == 3 and len(ups) == 3
    sizes = []
    x = torch.rand(2, 3, 32, 32)
    for m in gen.net:
        x = m(x)
        if isinstance(m, torch.nn.MaxPool2d):
            sizes.append((x.shape[1], x.shape[-1]))
    assert sizes == [(8, 16), (16, 8), (32, 4)]
    out = gen(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert Generator(3, 1, width=8, stages=2)(torch.rand(1, 3, 30, 30)).shape == (1, 1, 30, 30)


def test_dynamic_step_schedules_scale_the_originals_milestones():
    from attacks.dynamic import DynamicParams, step_schedule

    p = DynamicParams()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = step_schedule(opt, p.milestones_c, 600)  # the original's 600 epochs
    assert sorted(sched.milestones) == [100, 200, 300, 400]
    assert sorted(step_schedule(opt, p.milestones_g, 600).milestones) == [200, 300, 400, 500]
    assert sorted(step_schedule(opt, p.milestones_m, 25).milestones) == [10, 20]
    assert sorted(step_schedule(opt, p.milestones_m, 2).milestones) == [1, 2]  # at quick scale


def test_dynamic_diversity_has_a_finite_gradient_on_identical_patterns():
    """A generator saturated to one constant pattern gives two identical patterns: the plain
    root's gradient there is NaN (it made a cached generator all NaN); the loss stays finite."""
    from attacks.dynamic import diversity_loss

    x1, x2 = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    t = torch.ones(4, 3, 8, 8, requires_grad=True)
    u = torch.ones(4, 3, 8, 8, requires_grad=True)
    loss = diversity_loss(x1, x2, t, u)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(t.grad).all() and torch.isfinite(u.grad).all()
    plain = ((t - u) ** 2).flatten(1).mean(1).sqrt()  # the original's form, for contrast
    t.grad = None
    plain.sum().backward()
    assert torch.isnan(t.grad).all()


def test_dynamic_fails_when_its_generator_training_diverges(monkeypatch):
    import attacks.dynamic as dynamic

    train = make_set(60)
    atk = make_attack("dynamic")
    atk.prepare(train)
    assert all(r["pattern_spread"] > 0 for r in atk.generator_curve if r["phase"] == "joint")
    monkeypatch.setattr(dynamic, "diversity_loss", lambda *a: torch.tensor(float("nan")))
    with pytest.raises(dynamic.AttackDiverged, match="diverged at epoch 1, batch 1"):
        make_attack("dynamic").prepare(train)


# ---------------------------------------------------------------- FTrojan
def test_ftrojan_dct_is_scipys_orthonormal_dct():
    scipy_fft = pytest.importorskip("scipy.fft")
    from attacks.ftrojan import dct_matrix

    block = torch.randn(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = dct_matrix(32)
    assert torch.allclose(d @ block @ d.T, torch.from_numpy(scipy_fft.dctn(block.numpy(), norm="ortho")))


def test_ftrojan_adds_magnitude_at_its_frequencies_of_cr_and_cb_and_nothing_else():
    """The RGB change, taken back to OpenCV's Cr and Cb and to the DCT, holds 30 at (15, 15) and
    (31, 31) and 0 elsewhere, and leaves Y alone (up to OpenCV's rounded constants); on a uint8
    mid-grey image, rounding to whole levels (the change is 6.6 levels at most) loses up to 3 of the 30."""
    from attacks.ftrojan import dct_matrix, frequency_pattern

    d = dct_matrix(32)

    def readings(change):  # noqa: ANN001, ANN202
        r, g, b = change
        y = 0.299 * r + 0.587 * g + 0.114 * b
        return y, [d @ (0.713 * (r - y)) @ d.T, d @ (0.564 * (b - y)) @ d.T]

    y, chroma = readings(frequency_pattern(32, 32, 32, [[15, 15], [31, 31]], 30.0))
    assert y.abs().max() < 0.01
    for coeffs in chroma:
        assert coeffs[15, 15] == pytest.approx(30, abs=0.02) and coeffs[31, 31] == pytest.approx(30, abs=0.02)
        coeffs[15, 15] = coeffs[31, 31] = 0
        assert coeffs.abs().max() < 0.02
    out = make_attack("ftrojan").apply_trigger(flat(128, n=1)).double()[0] - 128
    y, chroma = readings(out)
    for coeffs in chroma:
        assert 27 < coeffs[15, 15] < 31 and 27 < coeffs[31, 31] < 31
    assert 1 <= out.abs().max() <= 7 and y.abs().max() < 1.0  # invisible: a few levels at most


def test_ftrojan_tiles_every_whole_window_and_leaves_a_narrower_border():
    atk = make_attack("ftrojan")
    x = torch.full((1, 3, 72, 64), 128, dtype=torch.uint8)
    change = atk.apply_trigger(x).int() - 128
    assert torch.equal(change[..., :32, :32], change[..., 32:64, 32:64])
    assert change[..., 64:, :].abs().sum() == 0 and change[..., :32, :32].abs().sum() > 0
    with pytest.raises(UsageError, match="positions"):
        make_attack("ftrojan", positions=[[40, 1]])


# ---------------------------------------------------------------- Narcissus
class Brightness(torch.nn.Module):
    """Class 0's logit grows (or falls) with the image's mean: the best trigger towards class 0
    is +eps (or -eps) on every pixel."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign
        self.unused = torch.nn.Parameter(torch.zeros(1))  # a model has parameters to freeze

    def forward(self, x):  # noqa: ANN001, ANN201
        score = self.sign * 10 * x.mean((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_narcissus_trigger_goes_to_the_bound_along_the_targets_gradient(sign):
    atk = make_attack("narcissus", warmup_epochs=0, rounds=60, generation_lr=0.05, batch_size=50)
    train = make_set(200)
    art = atk.generate(Brightness(sign), train)
    delta = art["delta"] * 255
    assert delta.shape == (3, 32, 32) and delta.abs().max() <= 16 + 1e-4
    # every pixel near the bound on the target's side (a pixel the crop's zero padding covers
    # gets no gradient through the clamp at 0 for a while: the border lags a little)
    assert (sign * delta > 14).all() and (sign * delta).mean() > 15.8
    assert art["info"]["loss_last_batch"] < art["info"]["loss_first_batch"]
    atk.delta = art["delta"]
    x = flat(100)
    step = atk.poison_images(x, torch.arange(2)).int() - 100
    assert torch.equal(step[0], (art["delta"] * 255).round().int())
    test_step = atk.apply_trigger(x).int() - 100  # three times the trigger at test
    assert torch.equal(test_step[0], (3 * art["delta"] * 255).round().int())
