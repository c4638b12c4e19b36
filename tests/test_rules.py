"""Each rule against a reference written here from its formula (numpy, on the layer's explicit weight matrix)."""
import copy

import numpy as np
import pytest
import torch

import relprop
from relprop import rules
from relprop.composites import Composite

STAB = 1e-6


def explain_with(model, x, rule, target=0):
    composite = Composite(layer_map={"linear": rule, "conv": rule, "avg_pool": rule})
    return relprop.explain(model, x, target=target, composite=composite)


# ---- hand-checkable numbers on a 2 -> 1 linear layer: x = [1, 2], w = [3, -1], b = 1, so z = 3 - 2 + 1 = 2 -------
def tiny_layer():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -1.0]]))
        layer.bias.fill_(1.0)
    return layer, torch.tensor([[1.0, 2.0]])


@pytest.mark.parametrize("rule, expected", [
    (rules.Zero(), [3.0, -2.0]),                  # z_i / z * R with R = z = 2: [3, -2]; the bias absorbs 1
    (rules.Epsilon(1.0), [2.0, -4.0 / 3.0]),      # denominator 2 + 1 = 3
    (rules.ZPlus(), [1.5, 0.0]),                  # z+ = 3 + b+ = 4: 3/4 * 2
    (rules.AlphaBeta(2, 1), [3.0, -2.0]),         # 2 * 3/4 * 2 and -1 * (-2)/(-2) * 2
    (rules.Gamma(0.5), [2.25, -1.0]),             # w' = [4.5, -1], b' = 1.5, z' = 4: [4.5, -2] / 4 * 2
    (rules.Flat(), [1.0, 1.0]),                   # 2 split evenly
    (rules.WSquare(), [1.8, 0.2]),                # 9/10 and 1/10 of 2
    # z_i = x_i w_i - low w_i+ - high w_i- = [3 - 0, -2 + 4] = [3, 2]; sum 5: R = [3, 2] / 5 * 2
    (rules.ZBox(low=0.0, high=4.0), [1.2, 0.8]),
])
def test_rule_gives_hand_computed_relevance(rule, expected):
    layer, x = tiny_layer()
    relevance = explain_with(layer, x, rule).relevance
    np.testing.assert_allclose(relevance[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_conserve_one_sided_hands_a_one_signed_output_all_its_relevance_hand_computed():
    layer, _ = tiny_layer()
    x = torch.tensor([[1.0, 0.0]])  # contributions [3, 0], bias 1: z = 4, no negative part at all
    textbook = explain_with(layer, x, rules.AlphaBeta(2, 1, stabilizer=0.0)).relevance
    kept = explain_with(layer, x, rules.AlphaBeta(2, 1, stabilizer=0.0, conserve_one_sided=True)).relevance
    np.testing.assert_allclose(textbook[0].numpy(), [6.0, 0.0])  # 2 * 3/4 * 4: alpha times too much
    np.testing.assert_allclose(kept[0].numpy(), [3.0, 0.0])  # 3/4 * 4, the bias keeps its quarter


def test_explainiverse_conventions_hand_computed():
    layer, _ = tiny_layer()
    x = torch.tensor([[1.0, -2.0]])  # contributions [3, 2], bias 1: z = 6
    # z+ on x+ only: x+ w+ = [3, 0], b+ = 1, denominator 4: [3/4 * 6, 0]; the signed z+ also counts (-2)(-1) = 2
    positive = explain_with(layer, x, rules.ZPlus(stabilizer=0.0, inputs="positive")).relevance
    np.testing.assert_allclose(positive[0].numpy(), [4.5, 0.0])
    signed = explain_with(layer, x, rules.ZPlus(stabilizer=0.0)).relevance
    np.testing.assert_allclose(signed[0].numpy(), [3.0, 2.0])  # [3, 2] / 6 * 6
    # gamma 0.5 unsigned: w' = [4.5, -1], b' = 1.5, z' = 4.5 + 2 + 1.5 = 8: [4.5, 2] / 8 * 6
    unsigned = explain_with(layer, x, rules.Gamma(0.5, stabilizer=0.0, signed=False)).relevance
    np.testing.assert_allclose(unsigned[0].numpy(), [27 / 8, 12 / 8])


def test_rule_options_are_checked_and_shown():
    with pytest.raises(ValueError, match="'signed'.*'positive'"):
        rules.ZPlus(inputs="negative")
    assert "inputs='positive'" in repr(rules.AlphaBeta(inputs="positive"))
    assert "signed=False" in repr(rules.Gamma(signed=False))


def test_exponent_rule_hand_computed():
    layer, x = tiny_layer()
    # p = 2: x^2 w^2 = [9, 4], denominator 13, R = z = 2 -> [18/13, 8/13]
    relevance = explain_with(layer, x, rules.Exponent(p=2.0)).relevance
    np.testing.assert_allclose(relevance[0].numpy(), [18 / 13, 8 / 13], rtol=1e-5)


# ---- a reference for any linear map, from its matrix A (out x in) and bias b ---------------------------------------
def stabilize(z, eps):
    return np.where(z >= 0, z + eps, z - eps)


def reference(rule, A, b, x, R):
    """Relevance at the input, straight from the rule's formula."""
    contributions = A * x[None, :]
    connected = (A != 0).astype(float)
    if isinstance(rule, rules.Zero):
        Z, z = contributions, contributions.sum(1) + b
        return (Z / z[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.Epsilon):
        Z = contributions
        z = Z.sum(1) + (0 if rule.zero_bias else b)
        return (Z / stabilize(z, rule.epsilon)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.ZPlus):
        # inputs="positive": only x+ w+ counts (negative inputs get nothing)
        Z = contributions.clip(min=0) if rule.inputs == "signed" else A.clip(min=0) * x.clip(min=0)[None, :]
        z = Z.sum(1) + b.clip(min=0)
        return (Z / stabilize(z, STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.AlphaBeta):
        if rule.inputs == "signed":
            Zp, Zn = contributions.clip(min=0), contributions.clip(max=0)
        else:
            Zp, Zn = A.clip(min=0) * x.clip(min=0)[None, :], A.clip(max=0) * x.clip(min=0)[None, :]
        kept = 0 if rule.zero_bias else 1
        zp, zn = Zp.sum(1) + kept * b.clip(min=0), Zn.sum(1) + kept * b.clip(max=0)
        alpha, beta = np.full_like(zp, rule.alpha), np.full_like(zn, rule.beta)
        if rule.conserve_one_sided:  # one part zero: the other part's coefficient cancels against its denominator
            zp, zn = np.where(zn == 0, zp * rule.alpha, zp), np.where(zp == 0, zn * -rule.beta, zn)
        return (alpha[:, None] * Zp / stabilize(zp, STAB)[:, None] * R[:, None]
                - beta[:, None] * Zn / stabilize(zn, STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.Gamma) and not rule.signed:
        Z = (A + rule.gamma * A.clip(min=0)) * x[None, :]
        z = Z.sum(1) + (0 if rule.zero_bias else b + rule.gamma * b.clip(min=0))
        return (Z / stabilize(z, STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.Gamma):
        z = contributions.sum(1) + b
        Zup = contributions + rule.gamma * contributions.clip(min=0)
        Zdown = contributions + rule.gamma * contributions.clip(max=0)
        kept = 0 if rule.zero_bias else 1
        zup = Zup.sum(1) + kept * (b + rule.gamma * b.clip(min=0))
        zdown = Zdown.sum(1) + kept * (b + rule.gamma * b.clip(max=0))
        Rp, Rn = R * (z > 0), R * (z < 0)
        return (Zup / stabilize(zup, STAB)[:, None] * Rp[:, None]
                + Zdown / stabilize(zdown, STAB)[:, None] * Rn[:, None]).sum(0)
    if isinstance(rule, rules.ZBox):
        Z = contributions - rule.low * A.clip(min=0) - rule.high * A.clip(max=0)
        return (Z / stabilize(Z.sum(1), STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.Flat):
        return (connected / stabilize(connected.sum(1), STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.WSquare):
        Z = A ** 2
        return (Z / stabilize(Z.sum(1), STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.Exponent):
        Z = (x[None, :] ** rule.p) * (A ** rule.p)
        return (Z / stabilize(Z.sum(1), rule.epsilon)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, rules.Norm):
        return (contributions / stabilize(contributions.sum(1), STAB)[:, None] * R[:, None]).sum(0)
    raise AssertionError(rule)


def matrix_of(fn, in_shape):
    """The matrix of a linear map (without bias), column by column from unit inputs."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape((n,) + tuple(in_shape))
    with torch.no_grad():
        columns = fn(basis).reshape(n, -1)
    return columns.T.numpy()


ALL_RULES = [
    rules.Zero(), rules.Epsilon(0.3), rules.Epsilon(0.3, zero_bias=True), rules.ZPlus(), rules.AlphaBeta(2, 1),
    rules.AlphaBeta(1, 0), rules.Gamma(0.25), rules.Gamma(1.0), rules.ZBox(-1.5, 2.0), rules.Flat(), rules.WSquare(),
    rules.Exponent(2.0), rules.Norm(), rules.ZPlus(inputs="positive"), rules.AlphaBeta(2, 1, inputs="positive"),
    rules.AlphaBeta(3, 2, conserve_one_sided=True), rules.Gamma(0.5, signed=False),
]


def _layers():
    torch.manual_seed(1)
    dense = torch.nn.Linear(5, 4)
    conv1 = torch.nn.Conv1d(2, 3, 3, padding=1)
    conv2 = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
    convt = torch.nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1)
    grouped = torch.nn.Conv2d(4, 4, 3, padding=1, groups=2)
    for layer in (dense, conv1, conv2, convt, grouped):
        with torch.no_grad():
            layer.bias.uniform_(-0.5, 0.5)  # biases non-zero, or rules could not be told apart
    return [("dense", dense, (5,)), ("conv1d", conv1, (2, 6)), ("conv2d", conv2, (2, 5, 5)),
            ("conv_transpose2d", convt, (2, 3, 3)), ("grouped_conv", grouped, (4, 4, 4))]


@pytest.mark.parametrize("rule, nonnegative", [(rule, False) for rule in ALL_RULES] + [
    (rules.Gamma(0.25), True), (rules.Gamma(1.0, zero_bias=True), True), (rules.ZPlus(), True),
    (rules.AlphaBeta(2, 1), True), (rules.AlphaBeta(3, 2, zero_bias=True), True),
    (rules.Gamma(0.5, signed=False), True), (rules.AlphaBeta(2, 1, conserve_one_sided=True), True)],
    ids=lambda v: repr(v) if not isinstance(v, bool) else ("x>=0" if v else "x"))
@pytest.mark.parametrize("case", _layers(), ids=lambda c: c[0])
def test_rule_matches_reference_on_linear_and_conv_layers(rule, nonnegative, case):
    _, layer, in_shape = case
    torch.manual_seed(2)
    x = torch.randn((1,) + in_shape)
    if isinstance(rule, rules.Exponent) or nonnegative:
        x = x.abs()  # the e-rule with p=2 is meant for non-negative inputs
    model = torch.nn.Sequential(layer, torch.nn.Flatten())
    with torch.no_grad():
        out = model(x)
    target_relevance = torch.zeros_like(out)
    target_relevance[0, ::2] = out[0, ::2]  # several outputs at once, of both signs
    relevance = explain_with(model, x, rule, target=target_relevance).relevance

    A, b = matrix_and_bias(layer, in_shape)
    assert A.shape[0] == out.shape[1:].numel()
    expected = reference(rule, A, b, x.double().flatten().numpy(), target_relevance.double().flatten().numpy())
    np.testing.assert_allclose(relevance.flatten().numpy(), expected, rtol=2e-4, atol=2e-5)


def matrix_and_bias(layer, in_shape):
    """The layer as (matrix, bias per output element), in float64."""
    without_bias = copy.deepcopy(layer).double()
    without_bias.register_parameter("bias", None)
    A = matrix_of(lambda basis: without_bias(basis).flatten(1), in_shape)
    with torch.no_grad():
        out_shape = without_bias(torch.zeros((1,) + in_shape, dtype=torch.float64)).shape[1:]
    bias = layer.bias.detach().double()
    b = bias.reshape((-1,) + (1,) * (len(out_shape) - 1)).expand(out_shape).reshape(-1).numpy()
    return A, b


def test_avg_pool_under_flat_keeps_relevance_in_its_channel():
    # iNNvestigate issue #213: pooling seen as a dense layer leaked relevance across channels under flat/w^2.
    torch.manual_seed(0)
    pool = torch.nn.AvgPool2d(2)
    x = torch.rand(1, 3, 4, 4)
    target = torch.zeros(1, 3, 2, 2)
    target[0, 1] = 1.0  # relevance only in channel 1
    composite = Composite(layer_map={torch.nn.AvgPool2d: rules.Flat()})
    relevance = relprop.explain(pool, x, target=target, composite=composite).relevance
    assert relevance[0, 0].abs().sum() == 0 and relevance[0, 2].abs().sum() == 0
    np.testing.assert_allclose(relevance[0, 1].numpy(), np.full((4, 4), 0.25), rtol=1e-5)


def test_adaptive_avg_pool_with_rule_is_a_per_channel_map():
    pool = torch.nn.AdaptiveAvgPool2d(1)
    x = torch.rand(2, 3, 4, 4)
    composite = Composite(layer_map={torch.nn.AdaptiveAvgPool2d: rules.WSquare()})
    expl = relprop.explain(pool, x, target=torch.ones(2, 3, 1, 1), composite=composite)
    np.testing.assert_allclose(expl.relevance.numpy(), np.full((2, 3, 4, 4), 1 / 16), rtol=1e-4)  # 1e-6 stabilizer


def test_flat_rule_gives_relevance_to_zero_valued_inputs():
    layer = torch.nn.Linear(3, 1)
    x = torch.tensor([[0.0, 1.0, 0.0]])
    relevance = explain_with(layer, x, rules.Flat()).relevance
    z = layer(x).item()
    np.testing.assert_allclose(relevance[0].numpy(), [z / 3] * 3, rtol=1e-5)


def test_alpha_beta_requires_conservative_parameters():
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        rules.AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match=">= 0"):
        rules.AlphaBeta(-1.0, -2.0)


def test_rules_by_name():
    assert rules.get("epsilon", epsilon=0.5) == rules.Epsilon(0.5)
    assert "gamma" in rules.names()
    with pytest.raises(ValueError, match=r"unknown rule 'gama' \(did you mean 'gamma'\?\); choose one of alpha_beta, "):
        rules.get("gama")
    with pytest.raises(TypeError, match=r"a rule is a relprop.rules object or a rule's name, got 0.25 \(float\)"):
        rules.get(0.25)
    with pytest.raises(ValueError, match="parameters can only be given with a rule name"):
        rules.get(rules.Epsilon(), epsilon=0.5)


def test_pass_rule_on_a_same_shape_layer_hands_relevance_through():
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3)
    out = layer(x).detach()
    expl = relprop.explain(layer, x, target=out, composite=Composite(layer_map={"linear": rules.Pass()}))
    torch.testing.assert_close(expl.relevance, out, rtol=1e-5, atol=1e-6)


def test_conv_with_string_padding():
    conv = torch.nn.Conv2d(2, 3, 3, padding="same")
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        conv.bias.zero_()
    expl = relprop.explain(conv, x, target=torch.ones(1, 3, 5, 5, dtype=torch.bool),
                           composite=Composite(layer_map={"conv": rules.Epsilon(1e-9)}))
    torch.testing.assert_close(expl.delta, torch.zeros(1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("build, message", [
    (lambda: rules.Epsilon("big"), r"epsilon must be a number, got 'big' \(str\)"),
    (lambda: rules.Epsilon(None), "epsilon must be a number, got None"),
    (lambda: rules.Epsilon(True), "epsilon must be a number, got True"),
    (lambda: rules.Gamma(gamma="0.25"), "gamma must be a number"),
    (lambda: rules.Gamma(stabilizer="small"), "stabilizer must be a number"),
    (lambda: rules.AlphaBeta(alpha="2"), "alpha must be a number"),
    (lambda: rules.ZPlus(zero_bias="no"), "zero_bias must be True or False, got 'no'"),
    (lambda: rules.Exponent(p="2"), "p must be a number"),
    (lambda: rules.ZBox(low="0"), "low must be a number"),
    (lambda: rules.Flat(stabilizer=[1e-6]), "stabilizer must be a number"),
])
def test_non_numeric_rule_parameters_are_refused_by_name(build, message):
    with pytest.raises(TypeError, match=message):
        build()


def test_rule_parameters_through_a_composite_are_refused_by_name():
    with pytest.raises(TypeError, match=r"epsilon must be a number, got 'big'"):
        relprop.LRP(torch.nn.Linear(2, 2), "epsilon", epsilon="big")
    with pytest.raises(TypeError, match=r"gamma must be a number"):
        relprop.LRP(torch.nn.Linear(2, 2), "attnlrp", gamma="high")
    with pytest.raises(ValueError, match="epsilon must be finite"):
        rules.Epsilon(float("inf"))


def test_numpy_numbers_are_taken_as_floats():
    rule = rules.Epsilon(np.float32(0.25))
    assert rule.epsilon == 0.25 and type(rule.epsilon) is float


def test_z_box_bounds_must_not_be_inverted():
    with pytest.raises(ValueError, match="z\\^B bounds need low <= high, got low=1.0, high=-1.0"):
        rules.ZBox(low=1.0, high=-1.0)
    with pytest.raises(ValueError, match="low <= high"):
        rules.ZBox(low=torch.tensor([0.0, 2.0, 0.0]).reshape(3, 1, 1), high=torch.ones(3, 1, 1))
    with pytest.raises(ValueError, match="low <= high"):
        relprop.LRP(torch.nn.Linear(2, 2), "epsilon_gamma_box", low=3.0, high=0.0)
    with pytest.raises(ValueError, match="must broadcast to one shape"):
        rules.ZBox(low=torch.zeros(3), high=torch.ones(2))
    rules.ZBox(low=torch.zeros(3, 1, 1), high=1.0)  # per-channel low with a scalar high is fine


def test_each_rule_says_whether_it_is_the_gradient_and_whether_it_splits_the_plain_contributions():
    gradient = {rule.name for rule in (rules.Gradient(), rules.Zero(), rules.Epsilon(0.0)) if rule.is_gradient}
    assert gradient == {"Gradient", "Zero", "Epsilon"}
    assert not any(rule.is_gradient for rule in (rules.Epsilon(0.1), rules.Zero(zero_bias=True), rules.Pass(),
                                                 rules.WinnerTakeAll(), rules.ZPlus(), rules.Norm()))
    plain = [rules.Zero(), rules.Epsilon(0.25, zero_bias=True), rules.Norm()]
    others = [rules.Gamma(0.0), rules.ZPlus(), rules.Flat(), rules.WSquare(), rules.Exponent(1.0), rules.Gradient(),
              rules.SmoothMax(), rules.ZBox()]
    assert all(rule.splits_plain_contributions for rule in plain)
    assert not any(rule.splits_plain_contributions for rule in others)


def test_a_new_rule_declaring_itself_the_gradient_runs_as_the_plain_gradient_on_a_linear_layer():
    class Plain(rules.Rule):
        is_gradient = True

    torch.manual_seed(0)
    layer, x = torch.nn.Linear(3, 2), torch.randn(4, 3)
    explanation = relprop.explain(layer, x, target=0, composite=Composite(layer_map={"linear": Plain()}))
    expected = x * layer.weight.detach()[0]  # gradient x input of output 0
    torch.testing.assert_close(explanation.relevance, expected, rtol=1e-5, atol=1e-6)
