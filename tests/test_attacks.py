"""Invariants every attack must keep (counts, labels, untouched samples, determinism)."""

import pytest
import torch

from attacks import ATTACKS
from tests.attack_helpers import make_set, poisoned
from tests.test_contracts import builtin

# every registered attack of the suite that poisons (``clean`` is the no-attack baseline)
ALL = [n for n in builtin(ATTACKS, "attacks") if n != "clean"]
CLEAN_LABEL = {n for n in ALL if ATTACKS.get(n).clean_label}
ALL_TO_ALL = {n for n in ALL if ATTACKS.get(n).Params().all_to_all}


def test_the_nine_attacks_are_registered():
    assert {"badnets", "trojan", "blended", "dynamic", "wanet", "sig", "cl", "adaptive_patch",
            "refool"} <= set(ALL) and CLEAN_LABEL == {"sig", "cl", "narcissus"}


# the attacks of issue 44 default to their reference code's rate; the paper's attacks to its 5%
REFERENCE_RATES = {"adaptive_blend": 0.003, "tact": 0.003, "ftrojan": 0.1, "narcissus": 0.0005}


@pytest.mark.parametrize("name", ALL)
def test_counts_labels_and_untouched_samples(name):
    train = make_set(max(400, round(2 / REFERENCE_RATES.get(name, 0.05))))  # 2 poisoned at least
    atk, ps = poisoned(name, train)
    idx = ps.poison_mask.nonzero().flatten()
    assert len(idx) == round(atk.params.rate * len(train)) > 0  # 5%, or the reference's own rate
    assert atk.params.rate == REFERENCE_RATES.get(name, 0.05)
    assert (name in ALL_TO_ALL) == (name == "badnets_all2all")
    if name in CLEAN_LABEL:
        assert (train.labels[idx] == 0).all()  # target-class images only
        assert torch.equal(ps.labels, train.labels)  # a clean-label attack never relabels
    elif name in ALL_TO_ALL:  # every class, each to the next
        assert len(set(train.labels[idx].tolist())) > 1
        assert torch.equal(ps.labels[idx], (train.labels[idx] + 1) % 10)
    else:
        assert (train.labels[idx] != 0).all()
        assert (ps.labels[idx] == 0).all()
        assert torch.equal(ps.labels[~ps.poison_mask], train.labels[~ps.poison_mask])
    # the trigger is on the poisoned (and cover) samples and nowhere else
    assert not torch.equal(ps.images[idx], train.images[idx])
    rest = ~ps.poison_mask & ~ps.cover_mask
    assert torch.equal(ps.images[rest], train.images[rest])
    # cover samples: disjoint from the poisoned ones, triggered, true labels
    assert not (ps.cover_mask & ps.poison_mask).any()
    if ps.cover_mask.any():
        assert torch.equal(ps.labels[ps.cover_mask], train.labels[ps.cover_mask])
        assert not torch.equal(ps.images[ps.cover_mask], train.images[ps.cover_mask])
    info = ps.info
    assert info["clean_label"] == (name in CLEAN_LABEL) and info["rate_of"].startswith("training set")


@pytest.mark.parametrize("name", ALL)
def test_same_seed_byte_identical_other_seed_differs(name):
    train = make_set(max(300, round(2 / REFERENCE_RATES.get(name, 0.05))))
    _, a = poisoned(name, train, seed=3)
    _, b = poisoned(name, train, seed=3)
    _, c = poisoned(name, train, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.poison_mask, b.poison_mask) and torch.equal(a.cover_mask, b.cover_mask)
    assert not torch.equal(a.poison_mask, c.poison_mask)


@pytest.mark.parametrize("name", ALL)
def test_test_triggering_excludes_the_target_class(name):
    train, test = make_set(300), make_set(100, seed=9)
    atk, _ = poisoned(name, train)
    trig = atk.trigger_test(test)
    keep = test.labels != 0 if name != "tact" else test.labels == 1  # TaCT: its source class only
    if name in ALL_TO_ALL:
        keep = torch.ones(len(test), dtype=torch.bool)  # every class has a target of its own
    assert len(trig) == int(keep.sum()) and torch.equal(trig.labels, test.labels[keep])
    assert trig.images.dtype == torch.uint8 and trig.images.shape[1:] == test.images.shape[1:]
    assert not torch.equal(trig.images, test.images[keep])


@pytest.mark.parametrize("name", ALL)
def test_works_on_imagenet_size_inputs(name):
    atk, _ = poisoned(name, make_set(200))
    big = make_set(4, size=224, seed=2).images
    out = atk.apply_trigger(big)
    assert out.shape == big.shape and out.dtype == torch.uint8
    assert not torch.equal(out, big)


def test_clean_baseline_poisons_nothing_and_its_trigger_is_the_identity():
    train = make_set(200)
    atk, ps = poisoned("clean", train)
    assert not ps.poison_mask.any() and not ps.cover_mask.any()
    assert torch.equal(ps.images, train.images) and torch.equal(ps.labels, train.labels)
    test = make_set(50, seed=3)
    trig = atk.trigger_test(test)
    assert torch.equal(trig.images, test.images[test.labels != 0])


@pytest.mark.parametrize("name", ["wanet", "badnets", "dynamic"])
def test_a_repoisoning_epoch_draws_new_rows_with_the_same_trigger(name):
    train = make_set(400)
    atk, fixed = poisoned(name, train, rate=0.25, repoison_every_epoch=True)  # rows shared by draws
    images0, labels0 = atk.repoisoned(train, 0)
    assert torch.equal(images0, fixed.images) and torch.equal(labels0, fixed.labels)  # epoch 0
    images1, labels1 = atk.repoisoned(train, 1)
    assert atk.draw == 0  # the attack object is left on the fixed set
    now = (labels1 == 0) & (train.labels != 0)  # relabelled rows of epoch 1
    assert int(now.sum()) == int(fixed.poison_mask.sum())
    assert not torch.equal(now, fixed.poison_mask)  # other rows ...
    both = now & fixed.poison_mask
    if name != "dynamic":  # ... the same trigger: a row poisoned in both draws is the same image
        assert both.any() and torch.equal(images1[both], fixed.images[both])
    untouched = (images1 == train.images).flatten(1).all(1)
    assert int((~untouched).sum()) >= int(now.sum())  # poisoned (and cover) rows carry it
    if fixed.cover_mask.any():  # cover rows of both draws: fresh per-sample noise / donors
        cover1 = ~untouched & (labels1 == train.labels)
        shared = cover1 & fixed.cover_mask
        differs = (images1[shared] != fixed.images[shared]).flatten(1).any(1)
        assert shared.any() and differs.float().mean() > 0.5
    again, _ = atk.repoisoned(train, 1)
    assert torch.equal(again, images1)  # seeded by (cell seed, epoch)


@pytest.mark.parametrize("name", ALL)
def test_all_to_all_applies_to_dirty_label_attacks_whose_trigger_ignores_the_target(name):
    from benchmark.registry import UsageError
    from tests.attack_helpers import make_attack

    train = make_set(200)
    atk = make_attack(name, all_to_all=True)
    refused = name in CLEAN_LABEL or name in ("refool", "dynamic", "tact")
    if refused:
        with pytest.raises(UsageError, match="all_to_all does not apply"):
            atk.check(train)
        return
    atk.check(train)
    labels = torch.tensor([0, 3, 9])
    assert atk.targets_of(labels, 10).tolist() == [1, 4, 0]
