"""What the DeepLift handlers share (ops/reference.py): the pairing of inputs with references, the quadrature, and
the path-averaged Jacobian of nonlinear ops, against integrated gradients computed here by a fine midpoint rule."""
import numpy as np
import pytest
import torch
from torch import nn

from relprop.attribution import DeepLift
from relprop.ops import reference


@pytest.mark.parametrize("count", [1, 3, 8])
def test_gauss_legendre_on_zero_one_integrates_polynomials_up_to_degree_2n_minus_1_exactly(count):
    nodes, weights = reference.gauss_legendre(count)
    assert all(0 < t < 1 for t in nodes) and sum(weights) == pytest.approx(1.0, rel=1e-14)
    for degree in range(2 * count):
        integral = sum(w * t ** degree for t, w in zip(nodes, weights))
        assert integral == pytest.approx(1 / (degree + 1), rel=1e-12), degree  # the integral of t^d on [0, 1]


def test_pairing_gives_each_input_row_its_reference_and_pads_gradients_with_zeros_for_the_references():
    batch = torch.arange(5.0, dtype=torch.float64).view(5, 1) * torch.ones(5, 2, dtype=torch.float64)
    pairing = reference.Pairing(rows=3, references=2, which=torch.tensor([1, 0, 1]))
    assert pairing.fits(batch) and not pairing.fits(batch[:4])
    np.testing.assert_array_equal(pairing.reference(batch)[:, 0].numpy(), [4.0, 3.0, 4.0])
    shared = reference.Pairing(rows=3, references=1, which=None)
    np.testing.assert_array_equal(shared.reference(batch[:4])[:, 0].numpy(), [3.0])  # one row, broadcast
    g = torch.ones(3, 2, dtype=torch.float64)
    np.testing.assert_array_equal(pairing.pad(g)[:, 0].numpy(), [1, 1, 1, 0, 0])
    scaled = pairing.scaled(torch.ones(5, 2, dtype=torch.float64), torch.full((3, 2), 2.0, dtype=torch.float64))
    np.testing.assert_array_equal(scaled[:, 0].numpy(), [2, 2, 2, 0, 0])


def test_a_difference_of_two_equal_infinities_counts_as_no_change():
    x = torch.tensor([float("-inf"), 1.0, float("inf")])
    x0 = torch.tensor([float("-inf"), 3.0, float("inf")])
    np.testing.assert_array_equal(reference.finite(x - x0).numpy(), [0.0, -2.0, 0.0])


def test_arguments_are_read_by_keyword_then_position_then_default_and_in_place_calls_are_recognised():
    assert reference.argument((1, 2), {"p": 7}, 1, "p", 0) == 7
    assert reference.argument((1, 2), {}, 1, "p", 0) == 2
    assert reference.argument((1,), {}, 1, "p", 0) == 0
    assert reference.modifies_input("torch.Tensor.mul_", (), {})
    assert reference.modifies_input("torch.nn.functional.relu", (None,), {"inplace": True})
    assert reference.modifies_input("torch.nn.functional.relu", (None, True), {})
    assert not reference.modifies_input("torch.nn.functional.relu", (None,), {})


class SoftmaxHead(nn.Module):
    """f(x) = W2 softmax(W1 x + b1) + b2: a nonlinear op of many inputs between two linear layers."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 5).double(), nn.Linear(5, 3).double()
        with torch.no_grad():
            self.first.bias.uniform_(0.5, 1.0)
            self.second.bias.uniform_(0.5, 1.0)

    def forward(self, x):
        return self.second(torch.softmax(self.first(x), dim=1))


def test_the_path_averaged_jacobian_gives_integrated_gradients_and_sums_exactly_to_the_output_difference():
    torch.manual_seed(3)
    model = SoftmaxHead().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    baseline = torch.randn(1, 4, dtype=torch.float64)
    relevance = DeepLift(model, baseline=baseline)(x, target=1).relevance
    # The linear layers are exact, so the multiplier of x is the gradient of f averaged along the straight path from
    # the baseline: integrated gradients, here by the midpoint rule on 2,000 points.
    steps = 2000
    t = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    expected = []
    for row in x:
        points = (baseline + t.view(-1, 1) * (row - baseline)).requires_grad_(True)
        (gradients,) = torch.autograd.grad(model(points)[:, 1].sum(), points)
        expected.append((row - baseline[0]) * gradients.mean(0))
    torch.testing.assert_close(relevance, torch.stack(expected), rtol=1e-6, atol=1e-8)
    difference = (model(x) - model(baseline))[:, 1].detach()
    torch.testing.assert_close(relevance.sum(1), difference, rtol=1e-12, atol=1e-12)
