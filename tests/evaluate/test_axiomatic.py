"""Axiomatic metrics: completeness, input invariance and non-sensitivity on models where the answer is known."""
import pytest
import torch

import relprop
from relprop import evaluate
from .models import linear_rows


def test_completeness_residual_from_a_baseline_and_from_delta():
    model = linear_rows()
    x = torch.randn(3, 6, dtype=torch.float64)
    exact = model.weight[2].detach() * x  # sums to f(x) - f(0) for a linear model
    assert torch.allclose(evaluate.completeness(model, x, exact, 2).scores, torch.zeros(3, dtype=torch.float64))
    off = exact.clone()
    off[:, 0] += 0.25
    assert torch.allclose(evaluate.completeness(model, x, off, 2).scores, torch.full((3,), 0.25, dtype=torch.float64))
    explanation = relprop.explain(model, x, target=2, composite="epsilon")
    result = evaluate.completeness(model, x, explanation)
    assert torch.allclose(result.scores, explanation.delta.abs().double())


def test_input_invariance_holds_for_the_gradient_and_not_for_gradient_x_input():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    kept = [p.clone() for p in model.parameters()]
    assert evaluate.input_invariance(model, x, explain="gradient", shift=2.0).scores.tolist() == [1.0] * 3
    assert evaluate.input_invariance(model, x, explain="gradient_x_input", shift=2.0).scores.tolist() == [0.0] * 3
    assert all(torch.equal(a, b) for a, b in zip(kept, model.parameters()))


def test_input_invariance_refuses_a_first_layer_that_pads():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(32, 2))
    with pytest.raises(ValueError, match="pads its input"):
        evaluate.input_invariance(model, torch.randn(1, 1, 4, 4), explain="gradient")


def test_non_sensitivity_counts_locations_where_relevance_and_effect_disagree():
    model = linear_rows()
    with torch.no_grad():
        model.weight[:, [1, 4]] = 0.0  # features 1 and 4 cannot change the output
    x = torch.randn(2, 6, dtype=torch.float64) + 3
    exact = model.weight[0].detach() * x
    assert evaluate.non_sensitivity(model, x, exact, 0, baseline=0.0).scores.tolist() == [0.0, 0.0]
    assert evaluate.non_sensitivity(model, x, x, 0, baseline=0.0).scores.tolist() == [2.0, 2.0]
