import itertools

import pytest
import torch

from benchmark.metrics import accuracy, attack_success_rate, auroc, isolation_rates


def test_isolation_rates_on_a_known_case():
    poisoned = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    isolated = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    r = isolation_rates(isolated, poisoned)
    assert r["tpr"] == pytest.approx(3 / 4)
    assert r["fpr"] == pytest.approx(1 / 6)
    assert r["precision"] == pytest.approx(3 / 4)
    assert (r["true_positives"], r["false_positives"], r["n_isolated"]) == (3, 1, 4)


def test_auroc_matches_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=g).double()
    pos = torch.rand(40, generator=g) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0)
             for a, b in itertools.product(scores[pos], scores[~pos])]
    assert auroc(scores, pos) == pytest.approx(sum(pairs) / len(pairs))
    assert auroc(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([False, False, True])) == 1.0


def test_accuracy_and_asr():
    assert accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
    assert attack_success_rate(torch.tensor([0, 0, 5, 0]), target=0) == pytest.approx(0.75)


def test_all_to_all_asr_counts_each_image_against_its_own_target():
    from benchmark.metrics import attack_success_rate

    pred = torch.tensor([1, 2, 2, 0])
    assert attack_success_rate(pred, torch.tensor([1, 2, 3, 0])) == 0.75  # (y + 1) mod C each
    assert attack_success_rate(pred, 2) == 0.5  # one target
