"""Per-attack checks that the trigger is the one the method defines."""

import math

import pytest
import torch
import torch.nn.functional as F

from attacks.triggers import to_uint8
from attacks.trojan import watermark_mask
from attacks.wanet import identity_grid
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


def test_trojan_optimisation_raises_the_chosen_neuron():
    train = make_set(200)
    plain, _ = poisoned("trojan", train)
    opt, _ = poisoned("trojan", train, optimize_steps=20, ref_epochs=1)
    assert not torch.equal(opt.pattern(3, 32, 32), plain.pattern(3, 32, 32))
    info = opt.optimisation
    assert info["activation_after"] > info["activation_before"]  # the chosen neuron fires more
    # outside the patch nothing changes, whatever the optimisation did
    x = flat(100)
    assert torch.equal(opt.apply_trigger(x)[:, :, :27], x[:, :, :27])


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


# ---------------------------------------------------------------- A-Patch
def test_adaptive_patch_equal_shares_partial_opacity_and_full_strength_test():
    train = make_set(400)
    atk, ps = poisoned("adaptive_patch", train, n_triggers=4, train_alpha=0.5)
    masks, patterns = atk.masks_and_patterns(3, 32, 32)
    idx = ps.poison_mask.nonzero().flatten()
    which = []
    for i in idx:
        changed = (ps.images[i] != train.images[i]).any(0)
        hits = [k for k in range(4) if changed[masks[k, 0].bool()].any()]
        assert len(hits) == 1 and not changed[~masks[hits[0], 0].bool()].any()  # one patch only
        which.append(hits[0])
        k = hits[0]
        expected = to_uint8(0.5 * train.images[i].float() / 255 + 0.5 * patterns[k].float() / 255)
        region = masks[k, 0].bool()
        assert torch.equal(ps.images[i][:, region], expected[:, region])  # blended at alpha 0.5
    counts = torch.bincount(torch.tensor(which), minlength=4)
    assert counts.max() - counts.min() <= 1  # equal shares
    out = atk.apply_trigger(flat(50))
    for k in range(4):
        region = masks[k, 0].bool()
        assert torch.equal(out[0][:, region], patterns[k][:, region])  # full strength at test


def test_adaptive_patch_triggers_are_disjoint_high_contrast_squares():
    atk, _ = poisoned("adaptive_patch", make_set(100), n_triggers=4, patch_size=4)
    masks, patterns = atk.masks_and_patterns(3, 32, 32)
    assert (masks.sum(0) <= 1).all() and (masks.flatten(1).sum(1) == 16).all()  # 4x4, no overlap
    for k in range(4):
        region = masks[k, 0].bool()
        values = patterns[k][:, region]
        assert set(values.unique().tolist()) == {0, 255}  # every pixel/channel fully on or off
        assert (patterns[k][:, ~region] == 0).all()
    big, _ = atk.masks_and_patterns(3, 224, 224)
    assert (big.flatten(1).sum(1) == 28 * 28).all()  # scaled with the image
    with pytest.raises(UsageError, match="do not fit"):
        poisoned("adaptive_patch", make_set(100), n_triggers=65, patch_size=4)


# ---------------------------------------------------------------- Refool
def test_refool_blends_a_pool_reflection_and_never_poisons_the_pool():
    train = make_set(400)
    atk, ps = poisoned("refool", train, mode="blur", alpha=0.4, n_reflections=10)
    assert not ps.poison_mask[atk.pool_rows].any()
    assert torch.equal(ps.images[atk.pool_rows], train.images[atk.pool_rows])
    assert (train.labels[atk.pool_rows] != 0).all()
    # on a black image the result is alpha x the blurred reflection: within the pool's range
    out = atk.apply_trigger(flat(0, 1)).float()
    assert 0 < out.max() <= 0.4 * 255 + 1
    ghost = make_attack("refool", mode="ghost", alpha=0.4, n_reflections=10)
    ghost.prepare(train)
    assert not torch.equal(ghost.apply_trigger(flat(0, 1)), atk.apply_trigger(flat(0, 1)))


def test_refool_clean_label_option_keeps_labels():
    train = make_set(400)
    _, ps = poisoned("refool", train, clean_label=True)
    assert torch.equal(ps.labels, train.labels)
    assert (train.labels[ps.poison_mask] == 0).all()


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
