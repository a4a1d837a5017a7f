import pytest
import torch

from attacks import ATTACKS, AttackContext
from benchmark.cache import ArtifactCache
from benchmark.data import ImageSet
from benchmark.registry import UsageError


def make_set(n=200, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 200, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 10
    return ImageSet(images, labels, [str(i) for i in range(10)])


def badnets(seed=0, **params):
    cls = ATTACKS.get("badnets")
    ctx = AttackContext(cache=ArtifactCache(None), cache_key={}, seed=seed, num_classes=10)
    return cls(cls.Params(**params), ctx)


def test_poison_count_indices_and_labels():
    train = make_set()
    atk = badnets(rate=0.1)
    ps = atk.poison_train(train)
    idx = ps.poison_mask.nonzero().flatten()
    assert len(idx) == 20 and ps.poison_mask.sum() == 20
    assert (train.labels[idx] != 0).all()  # dirty label: chosen among non-target images
    assert (ps.labels[idx] == 0).all()  # relabelled to the target
    assert torch.equal(ps.labels[~ps.poison_mask], train.labels[~ps.poison_mask])
    assert torch.equal(ps.original_labels, train.labels)
    assert not ps.cover_mask.any()


# ABL's _gridTriger on an HWC image: img[row][col] = value for the bottom-right 3x3 corner
ABL_GRID = {(31, 31): 255, (31, 30): 0, (31, 29): 255, (30, 31): 0, (30, 30): 255, (30, 29): 0,
            (29, 31): 255, (29, 30): 0, (29, 29): 0}


@pytest.mark.parametrize("pattern", [None, "white"])
def test_trigger_is_the_corner_patch_and_nothing_else_changes(pattern):
    train = make_set()
    ps = badnets(rate=0.1, **({"pattern": pattern} if pattern else {})).poison_train(train)
    idx = ps.poison_mask.nonzero().flatten()
    corner = ps.images[idx][:, :, 29:, 29:]
    if pattern == "white":
        assert (corner == 255).all()
    else:  # the default is ABL's grid, in every channel
        for (r, c), value in ABL_GRID.items():
            assert (ps.images[idx][:, :, r, c] == value).all(), (r, c)
    untouched = torch.ones(32, 32, dtype=torch.bool)
    untouched[29:, 29:] = False
    assert torch.equal(ps.images[idx][:, :, untouched], train.images[idx][:, :, untouched])
    assert torch.equal(ps.images[~ps.poison_mask], train.images[~ps.poison_mask])


def test_grid_scales_by_cells_with_the_image():
    out = badnets().apply_trigger(torch.full((1, 3, 224, 224), 100, dtype=torch.uint8))
    patch = out[0, :, -21:, -21:]  # 3 px at 32x32 -> 21 px: each grid cell a 7x7 block
    for (r, c), value in ABL_GRID.items():
        block = patch[:, (r - 29) * 7:(r - 28) * 7, (c - 29) * 7:(c - 28) * 7]
        assert (block == value).all(), (r, c)
    assert (out[0, :, :-21, :] == 100).all() and (out[0, :, :, :-21] == 100).all()


def test_checkerboard_variant_and_scaling_with_image_size():
    atk = badnets(pattern="checkerboard")
    out = atk.apply_trigger(torch.full((1, 3, 224, 224), 100, dtype=torch.uint8))
    patch = out[0, 0, -21:, -21:]  # 3 px at 32x32 -> 21 px at 224x224
    assert patch[0, 0] == 255 and patch[0, 1] == 0 and patch[1, 0] == 0 and patch[1, 1] == 255
    assert (out[0, :, :-21, :] == 100).all() and (out[0, :, :, :-21] == 100).all()
    with pytest.raises(UsageError, match="valid: grid, white, checkerboard"):
        badnets(pattern="stripes")


def test_same_seed_same_poisoned_set_other_seed_other_indices():
    train = make_set()
    a, b = badnets(seed=1).poison_train(train), badnets(seed=1).poison_train(train)
    c = badnets(seed=2).poison_train(train)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.poison_mask, b.poison_mask)
    assert not torch.equal(a.poison_mask, c.poison_mask)


def test_triggered_test_set_excludes_target_class_and_keeps_true_labels():
    test = make_set(100, seed=5)
    trig = badnets().trigger_test(test)
    assert len(trig) == 90 and (trig.labels != 0).all()
    assert torch.equal(trig.labels, test.labels[test.labels != 0])
    assert (trig.images[:, :, 31, 31] == 255).all() and (trig.images[:, :, 29, 29] == 0).all()


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_open_unit_interval_is_rejected(rate):
    with pytest.raises(UsageError, match=r"poison rate must be in \(0, 1\)"):
        badnets(rate=rate)
