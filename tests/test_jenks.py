import jenkspy
import numpy as np
import pytest
import torch

from benchmark.jenks import jenks_break_2class, jenks_upper


@pytest.mark.parametrize("seed", range(8))
def test_exact_two_class_break_matches_jenkspy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    kind = seed % 4
    if kind == 0:
        x = rng.normal(size=n)
    elif kind == 1:
        x = rng.exponential(size=n)
    elif kind == 2:  # clearly bimodal, like PIPD scores
        x = np.concatenate([rng.normal(0, 1, n), rng.normal(8, 1, n // 10)])
    else:
        x = rng.uniform(-5, 5, size=n)
    expected = jenkspy.jenks_breaks(x.tolist(), n_classes=2)[1]
    assert jenks_break_2class(x) == pytest.approx(expected, rel=0, abs=0)
    assert jenks_break_2class(x, method="jenkspy") == expected


def test_upper_class_inclusive_follows_reference():
    scores = torch.tensor([0.0, 0.1, 0.2, 10.0, 10.5])
    brk = jenks_break_2class(scores)
    assert brk == pytest.approx(0.2)
    # reference semantics: score >= break, which also flags the break value itself
    assert jenks_upper(scores, inclusive=True).tolist() == [False, False, True, True, True]
    assert jenks_upper(scores, inclusive=False).tolist() == [False, False, False, True, True]


def test_rejects_degenerate_input():
    with pytest.raises(ValueError):
        jenks_break_2class(np.array([1.0]))
    with pytest.raises(ValueError):
        jenks_break_2class(np.array([1.0, np.nan, 2.0]))
