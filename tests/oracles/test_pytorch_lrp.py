"""relprop's "pytorch_lrp" composite against Pytorch-LRP's RelevancePropagator, re-written here from its formulas.

Pytorch-LRP (moboehle/Pytorch-LRP, inverter_util.py) walks a sequential model backwards, layer by layer. The
reference below does the same in plain torch, float64, from the formulas its code computes:

- e-rule: a' = a^p, w' = w^p, n = a' w' (no bias), n + eps sign(n); R_in = a' (w'^T (R / n)), 0 where n = 0.
- b-rule: P = a+ w+ + a- w-, N = a- w+ + a+ w- (no bias); an output with P = 0 or N = 0 ("rare") has its norms
  multiplied by 1 + beta and -beta; each norm + eps sign(norm) (zero norms set to 1 first);
  R_in = a+ W+^T s+ + a- W-^T s+ + a- W+^T s- + a+ W-^T s-, s+ = (1 + beta) R / P, s- = -beta R / N.
- max-pool: relevance to the argmax of each window (max_unpool); ReLU, dropout, flatten pass relevance on.
- LogSoftmax at the output: relevance exp(log p) = p at the target (the rest exp(-1e6) = 0).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import rules

def transpose(layer_forward, a, s):
    """W^T s for the linear map a -> layer_forward(a), by autograd."""
    a = a.detach().requires_grad_(True)
    return torch.autograd.grad(layer_forward(a), a, s)[0]


def linear_forward(layer, weight):
    if isinstance(layer, nn.Linear):
        return lambda a: F.linear(a, weight)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[layer.weight.dim() - 2]
    return lambda a: conv(a, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def e_rule(layer, a, relevance, p, eps):
    a_p, w_p = a.pow(p), layer.weight.detach().pow(p)
    forward = linear_forward(layer, w_p)
    norm = forward(a_p)
    norm = norm + torch.sign(norm) * eps
    relevance = torch.where(norm == 0, 0.0, relevance)
    norm = torch.where(norm == 0, 1.0, norm)
    return a_p * transpose(forward, a_p, relevance / norm)


def b_rule(layer, a, relevance, beta, eps):
    w = layer.weight.detach()
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
    pos, neg = linear_forward(layer, w_pos), linear_forward(layer, w_neg)
    norm_pos = pos(a_pos) + neg(a_neg)
    norm_neg = pos(a_neg) + neg(a_pos)
    rare = (norm_pos == 0) | (norm_neg == 0)
    norm_pos = torch.where(norm_pos == 0, 1.0, norm_pos)
    norm_neg = torch.where(norm_neg == 0, 1.0, norm_neg)
    norm_pos = torch.where(rare, norm_pos * (1 + beta), norm_pos)
    norm_neg = torch.where(rare, norm_neg * (-beta if beta != 0 else 1), norm_neg)
    norm_pos = norm_pos + eps * torch.sign(norm_pos)
    norm_neg = norm_neg + eps * torch.sign(norm_neg)
    s_pos, s_neg = (1 + beta) * relevance / norm_pos, -beta * relevance / norm_neg
    return (a_pos * transpose(pos, a_pos, s_pos) + a_neg * transpose(neg, a_neg, s_pos)
            + a_neg * transpose(pos, a_neg, s_neg) + a_pos * transpose(neg, a_pos, s_neg))


def reference(model, x, target, method, p=1.0, beta=0.5, eps=1e-6, per_layer=None):
    """Pytorch-LRP's relevance at the input of a sequential model, for the given class per sample; per_layer (a
    list) receives the relevance after each layer, from the output down, as its get_r_values_per_layer()."""
    activations = [x]
    with torch.no_grad():
        for layer in model:
            activations.append(layer(activations[-1]))
    output = activations[-1]
    relevance = torch.zeros_like(output)
    relevance[torch.arange(len(x)), target] = output[torch.arange(len(x)), target]
    per_layer = [] if per_layer is None else per_layer
    per_layer.append(relevance)
    for layer, a in zip(reversed(model), reversed(activations[:-1])):
        if isinstance(layer, nn.LogSoftmax):
            if relevance.sum() < 0:
                relevance = torch.where(relevance == 0, -1e6, relevance).exp()
        elif isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            shape = layer(a).shape
            relevance = relevance.reshape(shape)
            if method == "e-rule":
                relevance = e_rule(layer, a, relevance, p, eps)
            else:
                relevance = b_rule(layer, a, relevance, beta, eps)
        elif isinstance(layer, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            dims = a.dim() - 2
            pooled, indices = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims](
                a, layer.kernel_size, layer.stride, layer.padding, return_indices=True)
            unpool = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}[dims]
            relevance = unpool(relevance.reshape(pooled.shape), indices, layer.kernel_size, layer.stride,
                               layer.padding, output_size=a.shape[2:])
        else:  # ReLU, Dropout, Flatten, Softmax: relevance passes on (reshaped where the layer reshapes)
            relevance = relevance.reshape(a.shape) if relevance.numel() == a.numel() else relevance
        per_layer.append(relevance)
    return relevance


def with_biases(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.3)
    return model.double().eval()


def mlp(log_softmax=False):
    torch.manual_seed(0)
    layers = [nn.Linear(5, 7), nn.ReLU(), nn.Dropout(0.3), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)]
    return with_biases(nn.Sequential(*layers, *([nn.LogSoftmax(dim=1)] if log_softmax else [])))


def cnn(dims):
    torch.manual_seed(0)
    conv, pool = {1: (nn.Conv1d, nn.MaxPool1d), 2: (nn.Conv2d, nn.MaxPool2d), 3: (nn.Conv3d, nn.MaxPool3d)}[dims]
    side = {1: 12, 2: 8, 3: 4}[dims]
    flat = 4 * (side // 2 - 1) ** dims
    return with_biases(nn.Sequential(conv(2, 3, 3, padding=1), nn.ReLU(), pool(2), conv(3, 4, 2), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(flat, 5), nn.ReLU(), nn.Linear(5, 3)))


def cnn_input(dims, batch=3):
    torch.manual_seed(2)
    side = {1: 12, 2: 8, 3: 4}[dims]
    return torch.randn(batch, 2, *(side,) * dims, dtype=torch.float64)


def relative(a, b):
    return float((a - b).norm() / b.norm())


def relprop_relevance(model, x, target, **params):
    return relprop.explain(model, x, target=target, composite="pytorch_lrp", canonizers=None, **params).relevance


CASES = [("e-rule", dict(lrp_exponent=1.0)), ("e-rule", dict(lrp_exponent=2.0)), ("b-rule", dict(beta=1.0)),
         ("b-rule", dict(beta=0.5)), ("b-rule", dict(beta=0.0))]


@pytest.mark.parametrize("method,params", CASES)
def test_pytorch_lrp_preset_equals_its_formulas_on_an_mlp_with_signed_inputs(method, params):
    model = mlp()
    torch.manual_seed(3)
    x = torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = reference(model, x, target, method, p=params.get("lrp_exponent", 1.0), beta=params.get("beta", 0.5))
    got = relprop_relevance(model, x, target.tolist(), method=method, **params)
    assert relative(got, expected) < 1e-10


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("method,params", [("e-rule", dict(lrp_exponent=1.0)), ("b-rule", dict(beta=1.0))])
def test_pytorch_lrp_preset_equals_its_formulas_on_small_cnns_with_max_pooling(dims, method, params):
    model, x = cnn(dims), cnn_input(dims)
    target = torch.tensor([2, 0, 1])
    expected = reference(model, x, target, method, p=params.get("lrp_exponent", 1.0), beta=params.get("beta", 0.5))
    got = relprop_relevance(model, x, target.tolist(), method=method, **params)
    assert relative(got, expected) < 1e-10


def test_recorded_layers_equal_its_relevance_per_layer_and_no_target_explains_the_predicted_class():
    model, x = cnn(2), cnn_input(2)
    per_layer = []
    predicted = model(x).argmax(1)
    reference(model, x, predicted, "b-rule", beta=1.0, per_layer=per_layer)
    names = [name for name, _ in model.named_children()]
    expl = relprop.explain(model, x, target=None, composite="pytorch_lrp", method="b-rule", beta=1.0,
                           canonizers=None, record=names)
    # its list runs from the output down: entry k is the relevance at the input of the k-th layer from the top
    recorded = [expl.layers[name] for name in reversed(names)] + [expl.relevance]
    assert len(recorded) == len(per_layer)
    for ours, theirs in zip(recorded, per_layer):
        assert relative(ours.reshape(theirs.shape), theirs) < 1e-10


def test_pytorch_lrp_numbers_behind_a_log_softmax_come_from_a_probability_target():
    model = mlp(log_softmax=True)
    torch.manual_seed(3)
    x = torch.randn(4, 5, dtype=torch.float64)
    target = torch.tensor([2, 1, 0, 2])
    expected = reference(model, x, target, "b-rule", beta=1.0)
    one_hot = F.one_hot(target, 3).double()
    expl = relprop.explain(model, x, target=lambda logits: torch.softmax(logits, 1) * one_hot,
                           composite="pytorch_lrp", method="b-rule", beta=1.0, canonizers=None)
    assert relative(expl.relevance, expected) < 1e-10
    # relprop's own policy explains the logit instead: a different, larger amount of relevance
    plain = relprop.explain(model, x, target=target.tolist(), composite="pytorch_lrp", method="b-rule", beta=1.0,
                            canonizers=None)
    assert plain.explained_logits and relative(plain.relevance, expected) > 0.1


def test_conserve_one_sided_conserves_relevance_where_textbook_alpha_beta_does_not():
    model = mlp()
    torch.manual_seed(3)
    x = torch.randn(8, 5, dtype=torch.float64)
    kept = rules.AlphaBeta(2.0, 1.0, stabilizer=0.0, zero_bias=True, conserve_one_sided=True)
    textbook = rules.AlphaBeta(2.0, 1.0, stabilizer=0.0, zero_bias=True)
    composite = relprop.composites.Composite(layer_map={"linear": kept})
    conserved = relprop.explain(model, x, target=0, composite=composite, canonizers=None)
    lost = relprop.explain(model, x, target=0, composite=relprop.composites.Composite(layer_map={"linear": textbook}),
                           canonizers=None)
    # after a ReLU, inputs are >= 0, so an output fed by only positive (or only negative) weights is one-sided
    assert torch.allclose(conserved.relevance_sum, conserved.explained, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(lost.relevance_sum, lost.explained, rtol=1e-3)


def test_conserve_one_sided_is_off_by_default_and_shown_in_the_rule():
    assert rules.AlphaBeta().conserve_one_sided is False
    assert "conserve_one_sided=True" in repr(rules.AlphaBeta(conserve_one_sided=True))


def test_conserve_one_sided_is_differentiable_and_equals_the_plain_pass():
    model = mlp()
    torch.manual_seed(4)
    x = torch.randn(3, 5, dtype=torch.float64)
    lrp = relprop.LRP(model, composite="pytorch_lrp", method="b-rule", beta=1.0, canonizers=None)
    plain = lrp(x, target=1).relevance
    graph = lrp(x, target=1, create_graph=True).relevance
    assert relative(graph.detach(), plain) < 1e-12
    (gradient,) = torch.autograd.grad(graph.square().sum(), model[0].weight)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_pytorch_lrp_preset_names_its_methods_when_given_another():
    with pytest.raises(ValueError, match="e-rule"):
        relprop.composites.get("pytorch_lrp", method="z-rule")
    with pytest.raises(ValueError, match="beta must be >= 0"):
        relprop.composites.get("pytorch_lrp", method="b-rule", beta=-1.0)
