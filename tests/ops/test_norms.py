"""Normalisation layers (ops/norms.py): layer, group and RMS norm and batch norm on batch statistics with their
statistics as constants, and batch norm merged into the layer before it, against references written here from the
formulas on tiny layers with non-zero biases and affine parameters (float64)."""
import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop import rules
from relprop.composites import Composite

ZERO = Composite(layer_map={"linear": rules.Zero()})  # LRP-0 on the layers: they pass R_j / z_j back exactly


def dense(inputs, outputs):
    layer = nn.Linear(inputs, outputs).double()
    with torch.no_grad():
        layer.bias.uniform_(0.5, 1.0)
    return layer


def affine(norm):
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        if getattr(norm, "bias", None) is not None:
            norm.bias.uniform_(-1.0, 1.0)
    return norm.double()


class Normed(nn.Module):
    """f(x) = W2 norm(W1 x + b1) + b2."""

    def __init__(self, norm, hidden=6):
        super().__init__()
        self.first, self.norm, self.second = dense(5, hidden), norm, dense(hidden, 3)

    def forward(self, x):
        return self.second(self.norm(self.first(x)))


def explain(model, x, **kwargs):
    return relprop.explain(model, x, target=2, composite=ZERO, **kwargs)


def weights(model):
    return (model.first.weight.detach().numpy(), model.first.bias.detach().numpy(),
            model.second.weight.detach().numpy()[2])


def test_layer_norm_explained_with_its_std_as_a_constant_is_a_centring_map_times_gamma_over_std():
    torch.manual_seed(8)
    model = Normed(affine(nn.LayerNorm(6, eps=1e-3))).eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    relevance = explain(model, x).relevance
    W1, b1, w = weights(model)
    gamma = model.norm.weight.detach().numpy()
    for sample, row in enumerate(x.numpy()):
        h = W1 @ row + b1
        std = np.sqrt(h.var() + 1e-3)
        # y = (h - mean h) / std * gamma + beta with std constant: dy_j/dh_k = gamma_j (delta_jk - 1/n) / std
        jacobian = gamma[:, None] * (np.eye(6) - 1 / 6) / std
        np.testing.assert_allclose(relevance[sample].numpy(), row * (W1.T @ (jacobian.T @ w)), rtol=1e-10,
                                   atol=1e-12)


def test_group_norm_explained_with_each_groups_std_as_a_constant():
    torch.manual_seed(9)
    model = Normed(affine(nn.GroupNorm(2, 6, eps=1e-3))).eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    relevance = explain(model, x).relevance
    W1, b1, w = weights(model)
    gamma = model.norm.weight.detach().numpy()
    for sample, row in enumerate(x.numpy()):
        h = W1 @ row + b1
        jacobian = np.zeros((6, 6))
        for group in (slice(0, 3), slice(3, 6)):
            std = np.sqrt(h[group].var() + 1e-3)
            jacobian[group, group] = (np.eye(3) - 1 / 3) / std
        jacobian *= gamma[:, None]
        np.testing.assert_allclose(relevance[sample].numpy(), row * (W1.T @ (jacobian.T @ w)), rtol=1e-10,
                                   atol=1e-12)


def test_rms_norm_explained_with_its_rms_as_a_constant_scales_by_gamma_over_rms():
    torch.manual_seed(10)
    model = Normed(affine(nn.RMSNorm(6, eps=1e-3))).eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    relevance = explain(model, x).relevance
    W1, b1, w = weights(model)
    gamma = model.norm.weight.detach().numpy()
    for sample, row in enumerate(x.numpy()):
        h = W1 @ row + b1
        rms = np.sqrt((h ** 2).mean() + 1e-3)
        np.testing.assert_allclose(relevance[sample].numpy(), row * (W1.T @ (w * gamma / rms)), rtol=1e-10,
                                   atol=1e-12)


def test_batch_norm_on_batch_statistics_takes_them_as_constants_and_moves_the_running_statistics_once():
    torch.manual_seed(11)
    model = Normed(affine(nn.BatchNorm1d(6, eps=1e-3))).train()
    x = torch.randn(4, 5, dtype=torch.float64)
    W1, b1, w = weights(model)
    gamma = model.norm.weight.detach().numpy()
    h = x.numpy() @ W1.T + b1
    var = h.var(0)  # the batch's variance (biased, as normalisation uses)
    running = model.norm.running_mean.clone()
    with pytest.warns(relprop.BatchMixingWarning, match="batch norm in training mode"):  # as it should
        relevance = explain(model, x, canonizers=None).relevance
    for sample, row in enumerate(x.numpy()):
        np.testing.assert_allclose(relevance[sample].numpy(), row * (W1.T @ (w * gamma / np.sqrt(var + 1e-3))),
                                   rtol=1e-10, atol=1e-12)
    # one plain forward's update: (1 - momentum) running + momentum batch mean
    np.testing.assert_allclose(model.norm.running_mean.numpy(), 0.9 * running.numpy() + 0.1 * h.mean(0), rtol=1e-12)


def test_batch_norm_after_a_layer_is_explained_with_it_as_one_layer_of_merged_weights_under_the_layers_rule():
    torch.manual_seed(12)
    eps = 0.25
    model = nn.Sequential(dense(4, 3), affine(nn.BatchNorm1d(3, eps=1e-3))).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(3, 4, dtype=torch.float64)
    relevance = relprop.explain(model, x, target=1, composite=Composite(layer_map={"linear": rules.Epsilon(eps)}))
    bn = model[1]
    scale = (bn.weight / torch.sqrt(bn.running_var + 1e-3)).detach().numpy()
    shift = bn.bias.detach().numpy() - bn.running_mean.numpy() * scale
    weight = model[0].weight.detach().numpy() * scale[:, None]  # W' = diag(scale) W, b' = scale b + shift
    bias = model[0].bias.detach().numpy() * scale + shift
    for sample, row in enumerate(x.numpy()):
        z = weight[1] @ row + bias[1]  # the batch norm's output, which is what is explained
        expected = row * weight[1] * z / (z + eps * np.sign(z))  # epsilon rule on the merged layer
        np.testing.assert_allclose(relevance.relevance[sample].numpy(), expected, rtol=1e-10)
    unmerged = relprop.explain(model, x, target=1, composite=Composite(layer_map={"linear": rules.Epsilon(eps)}),
                               canonizers=None).relevance
    assert (unmerged - relevance.relevance).abs().max() > 1e-3  # (the merge is what made the difference)
