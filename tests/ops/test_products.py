"""Products of activations (ops/products.py): the uniform split among factors, the gate that takes no relevance,
GPT-2's addmm as a linear layer, division, and DeepLift's midpoint rule, against references written here from the
formulas on tiny layers with non-zero biases (float64)."""
import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop import rules
from relprop.attribution import DeepLift
from relprop.composites import Composite

ZERO = Composite(layer_map={"linear": rules.Zero()})  # LRP-0 on the layers: they pass R_j / z_j back exactly


def dense(inputs, outputs):
    layer = nn.Linear(inputs, outputs).double()
    with torch.no_grad():
        layer.bias.uniform_(0.5, 1.0)
    return layer


class Factors(nn.Module):
    """f(x) = w . combine(A x + a, B x + b, C x + c) + d, for a product of the three branches."""

    def __init__(self, combine):
        super().__init__()
        self.branches = nn.ModuleList(dense(4, 3) for _ in range(3))
        self.head, self.combine = dense(3, 2), combine

    def forward(self, x):
        return self.head(self.combine(*(branch(x) for branch in self.branches)))

    def parts(self, row):
        """[(weight, pre-activation) of each branch at row], and the head's weights of class 0."""
        return ([(b.weight.detach().numpy(), b.weight.detach().numpy() @ row + b.bias.detach().numpy())
                 for b in self.branches], self.head.weight.detach().numpy()[0])


def test_a_product_of_three_activations_gives_each_factor_a_third_of_its_relevance():
    torch.manual_seed(4)
    model = Factors(lambda a, b, c: torch.einsum("ni,ni,ni->ni", a, b, c)).eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    relevance = relprop.explain(model, x, target=0, composite=ZERO).relevance
    for sample, row in enumerate(x.numpy()):
        [(A, a), (B, b), (C, c)], w = model.parts(row)
        # R_j = w_j a_j b_j c_j at the product; each factor takes R_j / 3, and LRP-0 hands x_i A_ji a_j^-1 R_j / 3 on
        expected = row * (A.T @ (w * b * c) + B.T @ (w * a * c) + C.T @ (w * a * b)) / 3
        np.testing.assert_allclose(relevance[sample].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_a_sigmoid_gate_gets_no_relevance_and_the_signal_it_scales_gets_all():
    torch.manual_seed(5)
    model = Factors(lambda a, b, c: torch.sigmoid(a) * b).eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    relevance = relprop.explain(model, x, target=0, composite=ZERO).relevance
    for sample, row in enumerate(x.numpy()):
        [(A, a), (B, b), _], w = model.parts(row)
        gate = 1 / (1 + np.exp(-a))
        expected = row * (B.T @ (w * gate))  # R_j = w_j gate_j b_j, all to b_j: x_i B_ji R_j / b_j
        np.testing.assert_allclose(relevance[sample].numpy(), expected, rtol=1e-10, atol=1e-12)
        # in total what the signal's inputs contribute, sum_j w_j gate_j (b_j - bias_j): its bias keeps its share
        bias = model.branches[1].bias.detach().numpy()
        assert relevance[sample].sum().item() == pytest.approx((w * gate * (b - bias)).sum(), rel=1e-10)


class Conv1D(nn.Module):
    """A linear layer written as GPT-2 writes it: bias + x @ W."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([0.5, -0.75, 1.0], dtype=torch.float64))

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


def test_addmm_of_bias_activation_and_weight_is_explained_as_a_linear_layer_under_its_rule():
    model = Conv1D()
    x = torch.randn(3, 4, dtype=torch.float64)
    eps = 0.5
    relevance = relprop.explain(model, x, target=2, composite=Composite(layer_map={"linear": rules.Epsilon(eps)}))
    W, bias = model.weight.detach().numpy(), model.bias.detach().numpy()
    for sample, row in enumerate(x.numpy()):
        z = row @ W[:, 2] + bias[2]
        expected = row * W[:, 2] * z / (z + eps * np.sign(z))  # epsilon rule: R_i = x_i w_i R / (z + eps sign z)
        np.testing.assert_allclose(relevance.relevance[sample].numpy(), expected, rtol=1e-10)


def test_division_by_a_constant_passes_relevance_and_division_by_an_activation_is_reported_in_strict_mode():
    torch.manual_seed(6)
    by_constant = Factors(lambda a, b, c: a / 4.0).eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    relevance = relprop.explain(by_constant, x, target=0, composite=ZERO).relevance
    for sample, row in enumerate(x.numpy()):
        [(A, _), _, _], w = by_constant.parts(row)
        np.testing.assert_allclose(relevance[sample].numpy(), row * (A.T @ w) / 4, rtol=1e-10, atol=1e-12)
    by_activation = Factors(lambda a, b, c: a / (b * b + 1)).eval()
    with pytest.raises(relprop.UnsupportedOperation, match="by an activation"):
        relprop.explain(by_activation, x, target=0, composite=ZERO, strict=True)


def test_deeplift_takes_the_gradient_of_a_product_of_two_activations_at_the_midpoints_which_is_exact():
    torch.manual_seed(7)
    model = Factors(lambda a, b, c: a * b).eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    baseline = torch.randn(1, 4, dtype=torch.float64)
    relevance = DeepLift(model, baseline=baseline)(x, target=0).relevance
    [(A, a0), (B, b0), _], w = model.parts(baseline[0].numpy())
    for sample, row in enumerate(x.numpy()):
        [(_, a), (_, b), _], _ = model.parts(row)
        # a b - a0 b0 = (a - a0)(b + b0) / 2 + (b - b0)(a + a0) / 2: the multipliers of a and b are the midpoints
        multiplier = A.T @ (w * (b + b0) / 2) + B.T @ (w * (a + a0) / 2)
        np.testing.assert_allclose(relevance[sample].numpy(), (row - baseline[0].numpy()) * multiplier, rtol=1e-10,
                                   atol=1e-12)
    difference = (model(x) - model(baseline))[:, 0].detach()
    torch.testing.assert_close(relevance.sum(1), difference, rtol=1e-12, atol=1e-12)
