"""The families explained by their own gradient (ops/gradient.py): linear maps, rectifiers and selections under LRP,
and their DeepLift rules (dropout refused in training, the winner rule of max-pooling), against references written
here from the formulas on tiny layers with non-zero biases (float64)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import rules
from relprop.attribution import DeepLift
from relprop.composites import Composite

ZERO = Composite(layer_map={"linear": rules.Zero()})  # LRP-0 on the layers: R_i = x_i w_ij R_j / z_j


def dense(inputs, outputs):
    layer = nn.Linear(inputs, outputs).double()
    with torch.no_grad():
        layer.bias.uniform_(0.5, 1.0)  # non-zero biases
    return layer


class Head(nn.Module):
    """f(x) = W2 act(op(W1 x + b1)) + b2 for an op of the gradient families."""

    def __init__(self, op, inputs=6, hidden=4):
        super().__init__()
        self.first, self.second, self.op = dense(inputs, hidden * 2), dense(hidden, 3), op

    def forward(self, x):
        return self.second(self.op(self.first(x)))


@pytest.mark.parametrize("name, op", [
    ("relu", lambda h: F.relu(h[:, :4] - h[:, 4:])),
    ("leaky_relu", lambda h: F.leaky_relu(h[:, :4] - h[:, 4:], 0.2)),
    ("abs", lambda h: (h[:, :4] - h[:, 4:]).abs()),
    ("mean over a reshaped pair", lambda h: h.view(-1, 2, 4).mean(1)),
    ("max over a pair", lambda h: h.view(-1, 2, 4).amax(1)),
])
def test_gradient_families_hand_each_input_its_gradient_times_input_under_lrp_0(name, op):
    torch.manual_seed(1)
    model = Head(op).eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    relevance = relprop.explain(model, x, target=1, composite=ZERO).relevance
    # Under LRP-0 on the layers and the plain gradient through these ops, relevance at the input is x * df/dx, written
    # here from the derivative of each op in numpy: a(u) = relu, leaky_relu, |u|, the mean or max of a pair of units.
    W1, b1 = model.first.weight.detach().numpy(), model.first.bias.detach().numpy()
    w2 = model.second.weight.detach().numpy()[1]
    for sample, row in enumerate(x.numpy()):
        h = W1 @ row + b1
        u = h[:4] - h[4:]
        if name == "relu":
            dh = np.concatenate([w2 * (u > 0), -w2 * (u > 0)])
        elif name == "leaky_relu":
            slope = np.where(u > 0, 1.0, 0.2)
            dh = np.concatenate([w2 * slope, -w2 * slope])
        elif name == "abs":
            dh = np.concatenate([w2 * np.sign(u), -w2 * np.sign(u)])
        elif name.startswith("mean"):
            dh = np.concatenate([w2 / 2, w2 / 2])
        else:  # the larger unit of each pair takes all
            first_wins = h[:4] >= h[4:]
            dh = np.concatenate([w2 * first_wins, w2 * ~first_wins])
        np.testing.assert_allclose(relevance[sample].numpy(), row * (W1.T @ dh), rtol=1e-10, atol=1e-12)


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool, self.head = nn.MaxPool2d(2), dense(2 * 2 * 2, 3)

    def forward(self, x):
        return self.head(self.pool(x).flatten(1))


def test_deeplift_hands_each_max_pool_windows_difference_to_the_maximum_of_the_input_or_of_the_baseline():
    torch.manual_seed(2)
    model = Pooled().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    baseline = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    relevance = DeepLift(model, baseline=baseline)(x, target=2).relevance.numpy()
    # Winner rule: window y = max x, y0 = max x0; w (y - y0) goes to where x has its maximum if y >= y0, else to where
    # x0 has its maximum (multiplier (y - y0) / (x_i - x0_i) times x_i - x0_i).
    w = model.head.weight.detach().numpy()[2].reshape(2, 2, 2)
    expected = np.zeros(x.shape)
    for sample in range(2):
        for channel in range(2):
            for i in range(2):
                for j in range(2):
                    window = x.numpy()[sample, channel, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    window0 = baseline.numpy()[0, channel, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    y, y0 = window.max(), window0.max()
                    winner = np.unravel_index((window if y >= y0 else window0).argmax(), (2, 2))
                    expected[sample, channel, 2 * i + winner[0], 2 * j + winner[1]] += w[channel, i, j] * (y - y0)
    np.testing.assert_allclose(relevance, expected, rtol=1e-9, atol=1e-12)
    differences = (model(x) - model(baseline))[:, 2].detach().numpy()
    np.testing.assert_allclose(relevance.reshape(2, -1).sum(1), differences, rtol=1e-9)


def test_deeplift_refuses_functional_dropout_in_training_and_takes_it_as_identity_when_off():
    class Dropping(nn.Module):
        def __init__(self, training):
            super().__init__()
            self.layer, self.dropping = dense(4, 2), training

        def forward(self, x):
            return self.layer(F.dropout(x, 0.5, training=self.dropping))

    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="dropout is active.*model.eval"):
        DeepLift(Dropping(True).eval())(x, target=0)
    model = Dropping(False).eval()
    relevance = DeepLift(model)(x, target=0).relevance  # baseline 0: w_i x_i exactly, the dropout is the identity
    torch.testing.assert_close(relevance, x * model.layer.weight.detach()[0], rtol=1e-12, atol=1e-12)
