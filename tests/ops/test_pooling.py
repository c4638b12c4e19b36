"""Pooling rules against windows enumerated here by hand (loops over kernel, stride, padding, dilation, ceil mode)."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop import composites, rules
from relprop.composites import Composite


def explain_pool(pool, x, rule, target=None):
    composite = Composite(layer_map={type(pool): rule})
    target = torch.ones_like(pool(x)) if target is None else target
    return relprop.explain(pool, x, target=target, composite=composite)


# ---- one 1-D example by hand: x = [1, 2, 3, 4, 5], kernel 3, stride 2, padding 1, ceil mode -------------------------
# windows {x0, x1}, {x1, x2, x3}, {x3, x4} (the first starts in the padding); outputs 2, 4, 5; relevance 1 each.
HAND_X = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]], dtype=torch.float64)


@pytest.mark.parametrize("rule, expected", [
    (rules.SmoothMax(0.0), [1 / 3, 2 / 3 + 2 / 9, 3 / 9, 4 / 9 + 4 / 9, 5 / 9]),  # x_i / window sum
    (rules.Norm(0.0), [1 / 3, 2 / 3 + 2 / 9, 3 / 9, 4 / 9 + 4 / 9, 5 / 9]),  # the same, by its linear-map name
    (rules.Flat(0.0), [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2]),  # evenly over the in-bounds inputs
    (rules.WinnerTakeAll(), [0.0, 1.0, 0.0, 1.0, 1.0]),  # the maxima x1, x3, x4
])
def test_max_pool_rule_gives_hand_computed_relevance_on_overlapping_padded_ceil_mode_windows(rule, expected):
    pool = nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True)
    assert pool(HAND_X).flatten().tolist() == [2.0, 4.0, 5.0]
    relevance = explain_pool(pool, HAND_X, rule).relevance
    np.testing.assert_allclose(relevance.flatten().numpy(), expected, rtol=1e-12)


def test_average_pooling_in_ceil_mode_takes_window_rules_exactly_instead_of_falling_back():
    pool = nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True)
    relevance = explain_pool(pool, HAND_X, rules.Flat(0.0)).relevance
    np.testing.assert_allclose(relevance.flatten().numpy(), [1 / 2, 5 / 6, 1 / 3, 5 / 6, 1 / 2], rtol=1e-12)
    smooth = explain_pool(pool, HAND_X, rules.SmoothMax(0.0)).relevance
    np.testing.assert_allclose(smooth.flatten().numpy(), [1 / 3, 8 / 9, 1 / 3, 8 / 9, 5 / 9], rtol=1e-12)


# ---- a reference from explicit windows, for 1-D, 2-D and 3-D ------------------------------------------------------
def windows_1d(length, outputs, kernel, stride, padding, dilation):
    """In-bounds input positions of each output of a fixed-window pooling along one dimension."""
    return [[o * stride - padding + m * dilation for m in range(kernel)
             if 0 <= o * stride - padding + m * dilation < length] for o in range(outputs)]


def adaptive_windows_1d(length, outputs):
    return [list(range(math.floor(o * length / outputs), math.ceil((o + 1) * length / outputs)))
            for o in range(outputs)]


def reference(x, relevance_out, per_dim_windows, rule):
    """Relevance at x (N, C, *spatial) from relevance at the pooled outputs, window by window."""
    x, out = x.numpy(), relevance_out.numpy()
    result = np.zeros_like(x)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for position in itertools.product(*[range(len(w)) for w in per_dim_windows]):
            window = list(itertools.product(*[per_dim_windows[d][o] for d, o in enumerate(position)]))
            values = np.array([x[(n, c) + i] for i in window])
            if rule == "flat":
                shares = np.full(len(window), 1.0 / len(window))
            elif rule == "proportional":  # an all-zero window (after a ReLU) has nothing to hand on
                shares = values / values.sum() if values.sum() else np.zeros(len(window))
            else:  # winner
                shares = (np.arange(len(window)) == values.argmax()).astype(float)
            for i, share in zip(window, shares):
                result[(n, c) + i] += share * out[(n, c) + position]
    return result


POOLS = [  # (module, fixed-window parameters or None for adaptive)
    (nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), (3, 2, 1, 1)),
    (nn.MaxPool1d(2, stride=1, dilation=2), (2, 1, 0, 2)),
    (nn.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True), ((3, 2), (2, 1), (1, 0), (1, 1))),
    (nn.MaxPool3d(2, stride=1, padding=1), (2, 1, 1, 1)),
    (nn.AdaptiveMaxPool2d((2, 3)), None),
    (nn.AdaptiveMaxPool3d((2, 1, 2)), None),
    (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), ((3, 3), (2, 2), (1, 1), (1, 1))),
    (nn.AdaptiveAvgPool1d(3), None),
]
SHAPES = {1: (2, 2, 7), 2: (1, 2, 5, 7), 3: (1, 2, 4, 3, 5)}


@pytest.mark.parametrize("pool, window", POOLS, ids=lambda value: repr(value)[:40])
@pytest.mark.parametrize("rule, kind", [(rules.SmoothMax(0.0), "proportional"), (rules.Flat(0.0), "flat")])
def test_window_rules_equal_the_explicit_window_reference_in_1d_2d_and_3d(pool, window, rule, kind):
    torch.manual_seed(0)
    dims = int(type(pool).__name__[-2])
    x = torch.rand(SHAPES[dims], dtype=torch.float64) + 0.1  # positive: proportional shares are well defined
    out = pool(x)
    target = torch.rand_like(out)
    lengths, outputs = x.shape[2:], out.shape[2:]
    if window is None:
        windows = [adaptive_windows_1d(length, o) for length, o in zip(lengths, outputs)]
    else:
        kernel, stride, padding, dilation = [p if isinstance(p, tuple) else (p,) * dims for p in window]
        windows = [windows_1d(*sizes) for sizes in zip(lengths, outputs, kernel, stride, padding, dilation)]
    relevance = explain_pool(pool, x, rule, target).relevance
    np.testing.assert_allclose(relevance.numpy(), reference(x, target, windows, kind), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(relevance.sum().item(), target.sum().item(), rtol=1e-10)  # conserved


def test_winner_take_all_is_max_poolings_gradient_and_its_default():
    torch.manual_seed(1)
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    target = torch.rand_like(pool(x))
    windows = [windows_1d(6, 3, 3, 2, 1, 1)] * 2
    expected = reference(x, target, windows, "winner")
    for composite in (Composite(layer_map={nn.MaxPool2d: rules.WinnerTakeAll()}), Composite()):
        relevance = relprop.explain(pool, x, target=target, composite=composite).relevance
        np.testing.assert_allclose(relevance.numpy(), expected, rtol=1e-12)


# ---- a rule mapped to a pooling layer is applied or refused, never ignored (issue 20, item 5) ----------------------
def small_cnn():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 2)).eval().double()


@pytest.mark.parametrize("rule", [rules.Norm(), rules.Flat(), rules.SmoothMax(), rules.WinnerTakeAll()])
def test_a_rule_mapped_to_max_pooling_is_applied_and_named_in_the_report(rule):
    model, x = small_cnn(), torch.rand(1, 1, 8, 8, dtype=torch.float64)
    composite = Composite(layer_map={nn.MaxPool2d: rule}, default=rules.Epsilon())
    rows = relprop.LRP(model, composite).report(x, target=0).rows
    assert [row.rule for row in rows if "max_pool" in row.op] == [rule.name]


def test_max_pooling_inside_a_network_hands_each_window_relevance_in_proportion_to_its_inputs():
    model, x = small_cnn(), torch.rand(1, 1, 8, 8, dtype=torch.float64)
    composite = Composite(layer_map={nn.MaxPool2d: rules.SmoothMax(0.0)})
    layers = relprop.LRP(model, composite, record=["1", "2"])(x, target=0).layers  # the pool's input and output
    pooled_in = model[1](model[0](x)).detach()
    windows = [windows_1d(8, 4, 2, 2, 0, 1)] * 2
    np.testing.assert_allclose(layers["1"].numpy(), reference(pooled_in, layers["2"], windows, "proportional"),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rule", [rules.Gamma(), rules.ZPlus(), rules.AlphaBeta(), rules.Pass(), rules.SoftMin()])
def test_a_rule_max_pooling_cannot_take_is_refused_by_name_with_the_rules_it_takes(rule):
    model, x = small_cnn(), torch.rand(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match=rf"{rule.name}.*max-pooling '2'.*WinnerTakeAll.*SmoothMax.*Flat"):
        relprop.explain(model, x, target=0, composite=Composite(layer_map={nn.MaxPool2d: rule}))


@pytest.mark.parametrize("rule", [rules.Pass(), rules.WinnerTakeAll()])
def test_a_rule_average_pooling_cannot_take_is_refused_by_name(rule):
    pool, x = nn.AvgPool2d(2), torch.rand(1, 2, 4, 4)
    with pytest.raises(TypeError, match=rf"{rule.name}.*average pooling.*SmoothMax"):
        explain_pool(pool, x, rule)


def test_max_pooling_takes_rules_by_kind_and_exact_name_but_not_from_globs_or_the_default():
    model, x = small_cnn(), torch.rand(1, 1, 8, 8, dtype=torch.float64)

    def pool_rule(composite):
        rows = relprop.LRP(model, composite).report(x, target=0).rows
        return [row.rule for row in rows if "max_pool" in row.op][0]

    assert pool_rule(Composite(layer_map={"max_pool": rules.Flat()})) == "Flat"
    assert pool_rule(Composite(name_map={"2": rules.SmoothMax()})) == "SmoothMax"
    # meant for the convolutions: a glob or default gamma would be refused at the pool, so they do not reach it
    assert pool_rule(Composite(name_map={"*": rules.Gamma()}, default=rules.ZPlus())) == "Gradient"


def test_presets_keep_winner_take_all_on_max_pooling():
    model, x = small_cnn(), torch.rand(1, 1, 8, 8, dtype=torch.float64)
    for name in composites.names():
        rows = relprop.LRP(model, name).report(x, target=0).rows
        assert [row.rule for row in rows if "max_pool" in row.op] == ["Gradient"], name


def test_max_pooling_with_indices_keeps_its_indices_under_a_window_rule():
    class Unpooled(nn.Module):
        def forward(self, x):
            values, indices = nn.functional.max_pool2d(x, 2, return_indices=True)
            return values.flatten(1) + 0 * indices.flatten(1).to(x.dtype)

    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    expl = relprop.explain(Unpooled(), x, target=torch.ones(1, 4, dtype=torch.float64),
                           composite=Composite(layer_map={"max_pool": rules.Flat(0.0)}))
    np.testing.assert_allclose(expl.relevance.numpy(), np.full((1, 1, 4, 4), 0.25), rtol=1e-12)
