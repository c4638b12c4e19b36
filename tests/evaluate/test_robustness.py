"""Robustness metrics on a linear model, where gradient x input changes by exactly W * noise."""
import pytest
import torch

from relprop import evaluate
from relprop.evaluate.runner import pair_generator
from .models import linear_rows


def gradient_x_input(model, x, target):
    return model.weight[target].detach() * x


def noises(kind, n, count, seed, scale):
    out = []
    for k in range(count):
        g = pair_generator(seed, n, k, "cpu")
        draw = torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1 if kind == "uniform" else \
            torch.randn(6, generator=g, dtype=torch.float64)
        out.append(draw * scale)
    return out


def test_max_and_average_sensitivity_follow_yeh_with_uniform_noise():
    model = linear_rows()
    x = torch.randn(3, 6, dtype=torch.float64)
    top = evaluate.max_sensitivity(model, x, 1, gradient_x_input, nr_samples=7, lower_bound=0.3, batch_size=4)
    mean = evaluate.avg_sensitivity(model, x, 1, gradient_x_input, nr_samples=7, lower_bound=0.3, batch_size=4)
    w = model.weight[1].detach()
    for n in range(3):
        ratios = [float((w * u).norm() / (w * x[n]).norm()) for u in noises("uniform", n, 7, 0, 0.3)]
        assert top.scores[n].item() == pytest.approx(max(ratios))
        assert mean.scores[n].item() == pytest.approx(sum(ratios) / 7)


def test_local_lipschitz_estimate_is_the_largest_ratio_of_explanation_to_input_change():
    model = linear_rows()
    x = torch.randn(2, 6, dtype=torch.float64)
    result = evaluate.local_lipschitz_estimate(model, x, 0, gradient_x_input, nr_samples=5, perturb_std=0.2, seed=2)
    w = model.weight[0].detach()
    for n in range(2):
        ratios = [float((w * u).norm() / u.norm()) for u in noises("normal", n, 5, 2, 0.2)]
        assert result.scores[n].item() == pytest.approx(max(ratios))


def test_perturbed_explanations_are_computed_in_chunks_of_batch_size():
    model = linear_rows()
    sizes = []

    def explain(m, inputs, target):
        sizes.append(len(inputs))
        return gradient_x_input(m, inputs, 0)

    evaluate.max_sensitivity(model, torch.randn(3, 6, dtype=torch.float64), 0, explain, nr_samples=10, batch_size=4)
    assert sizes[0] == 3 and max(sizes[1:]) <= 4 and sum(sizes[1:]) == 30
