"""Complexity metrics against numpy references from the formulas."""
import numpy as np
import pytest
import torch

from relprop import evaluate


def test_sparseness_is_the_gini_index_of_the_magnitudes():
    relevance = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    result = evaluate.sparseness(relevance, relevance)
    for n in range(3):
        a = np.sort(np.abs(relevance[n].numpy().sum(0)).flatten())
        d = len(a)
        gini = sum((2 * i - d - 1) * a[i - 1] for i in range(1, d + 1)) / (d * a.sum())
        assert result.scores[n].item() == pytest.approx(gini)
    one_hot = torch.zeros(1, 10, dtype=torch.float64)
    one_hot[0, 3] = 2.0
    assert evaluate.sparseness(one_hot, one_hot).scores.item() == pytest.approx(0.9)  # (d - 1) / d
    assert evaluate.sparseness(one_hot, torch.ones_like(one_hot)).scores.item() == pytest.approx(0.0)


def test_complexity_is_the_entropy_of_fractional_contributions():
    relevance = torch.randn(2, 7, dtype=torch.float64)
    relevance[0, 2] = 0.0
    result = evaluate.complexity(relevance, relevance)
    for n in range(2):
        p = np.abs(relevance[n].numpy()) / np.abs(relevance[n].numpy()).sum()
        assert result.scores[n].item() == pytest.approx(-sum(q * np.log(q) for q in p if q > 0))


def test_effective_complexity_counts_locations_above_eps_and_all_zero_relevance_gives_nan():
    relevance = torch.tensor([[0.0, 1e-6, 0.5, -2.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert evaluate.effective_complexity(relevance, relevance).scores.tolist() == [2.0, 0.0]
    assert evaluate.sparseness(relevance, relevance).scores[1].isnan()
