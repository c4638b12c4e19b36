"""Composites: the registry, precedence of the maps, and every constructor parameter changing the result."""
import inspect

import pytest
import torch
from torch import nn

import relprop
from relprop import composites, rules
from relprop.composites import Composite, Site
from relprop.neuralize import neuralize
from tests.models import with_biases


def small_cnn():
    torch.manual_seed(0)
    return with_biases(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3)), scale=0.5).eval()


def test_registry_lists_the_documented_composites():
    assert composites.names() == ["attnlrp", "cp_lrp", "epsilon", "epsilon_alpha2_beta1",
                                  "epsilon_alpha2_beta1_flat", "epsilon_gamma_box", "epsilon_plus",
                                  "epsilon_plus_flat", "explainiverse", "neon", "pytorch_lrp"]
    assert isinstance(composites.get("epsilon_gamma_box", low=0.0, high=1.0), composites.EpsilonGammaBox)
    assert [row[0] for row in composites.describe()] == composites.names()


PARAMETER_CHANGES = {
    "epsilon": 0.5, "stabilizer": 0.5, "gamma": 2.0, "low": -0.5, "high": 0.5, "zero_bias": True,
    "lrp_exponent": 2.0, "method": "b-rule",
}
# Parameters that act only together with others: (composite, parameter) -> (what they need, the change)
PARAMETER_CONTEXT = {
    ("pytorch_lrp", "beta"): ({"method": "b-rule"}, {"beta": 1.0}),
    ("explainiverse", "rule"): ({}, {"rule": "z_plus"}),
    ("explainiverse", "gamma"): ({"rule": "gamma"}, {"gamma": 2.0}),
    ("explainiverse", "alpha"): ({"rule": "alpha_beta"}, {"alpha": 3.0, "beta": 2.0}),
    ("explainiverse", "beta"): ({"rule": "alpha_beta"}, {"alpha": 1.0, "beta": 0.0}),
    ("explainiverse", "layer_rules"): ({"rule": "composite"}, {"layer_rules": {0: "z_plus"}}),
    ("neon", "beta"): ({}, {"beta": 100.0}),
}


@pytest.mark.parametrize("name", composites.names())
def test_every_constructor_parameter_changes_the_result(name):
    # zennit users found composites that ignored their epsilon and beta_smooth: each parameter here must matter.
    model = small_cnn()
    if name == "neon":  # its beta acts on neuralized k-means: cluster the CNN's outputs
        model = nn.Sequential(model, neuralize(torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.1, 0.0], [0.0, 0.1, 0.1]])))
    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 6)
    parameters = [p for p in inspect.signature(composites._REGISTRY[name]).parameters
                  if p not in ("layer_map", "name_map", "index_map")]
    assert parameters, name
    for parameter in parameters:
        context, change = PARAMETER_CONTEXT.get((name, parameter), ({}, {parameter: PARAMETER_CHANGES.get(parameter)}))
        baseline = relprop.explain(model, x, target=0, composite=composites.get(name, **context)).relevance
        changed = relprop.explain(model, x, target=0, composite=composites.get(name, **{**context, **change}))
        assert (changed.relevance - baseline).abs().max() > 1e-5, f"{name}({parameter}=...) changed nothing"


def site(kind="conv", name="features.3", index=2, module=None):
    return Site(kind, "torch.nn.functional.conv2d", module, name, index)


def test_precedence_is_name_then_position_then_type_then_default():
    by_name, by_index, by_type, by_kind, default = (rules.Flat(), rules.ZPlus(), rules.Gamma(), rules.Epsilon(),
                                                     rules.Zero())
    composite = Composite(layer_map={nn.Conv2d: by_type, "conv": by_kind}, name_map={"features.*": by_name},
                          index_map={2: by_index}, default=default)
    conv = nn.Conv2d(1, 1, 1)
    assert composite.rule_for(site(module=conv)) is by_name
    assert composite.rule_for(site(name="head", module=conv)) is by_index
    assert composite.rule_for(site(name="head", index=5, module=conv)) is by_type
    assert composite.rule_for(site(name="head", index=5)) is by_kind  # functional conv: no module
    assert composite.rule_for(site(kind="linear", name="head", index=5)) is default
    assert composite.rule_for(site(kind="conv_transpose", name="up", index=5)) is by_kind  # "conv" covers both


def test_user_maps_extend_a_named_composite_and_win():
    model = small_cnn()
    x = torch.randn(1, 3, 6, 6)
    custom = composites.EpsilonPlusFlat(name_map={"6": rules.Flat()})
    report = relprop.LRP(model, custom).report(x)
    rules_by_module = {row.module: row.rule for row in report}
    assert rules_by_module["0"] == "Flat" and rules_by_module["2"] == "ZPlus"
    assert rules_by_module["6"] == "Flat" and rules_by_module["8"] == "Epsilon"


def test_first_layer_is_the_first_one_run_not_the_first_registered():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.stem = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.head(torch.relu(self.stem(x)).mean((2, 3)))

    report = relprop.LRP(Backwards(), "epsilon_plus_flat").report(torch.randn(1, 3, 5, 5))
    assert {row.module: row.rule for row in report}["stem"] == "Flat"


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match="unknown layer kind 'dense'"):
        Composite(layer_map={"dense": rules.Epsilon()})
    with pytest.raises(TypeError, match=r"composite layer_map\['linear'\]: a composite maps layers to rules"):
        Composite(layer_map={"linear": 0.25})
    with pytest.raises(TypeError, match=r"composite default: .* got <class 'relprop.rules.Epsilon'>"):
        Composite(default=rules.Epsilon)


def test_rule_names_are_taken_wherever_a_composite_takes_a_rule():
    named = Composite(layer_map={nn.Linear: "epsilon", "conv": "z_plus"}, name_map={"features.*": "flat"},
                      index_map={2: "gamma"}, first="w_square", default="zero")
    assert named.layer_map == {nn.Linear: rules.Epsilon(), "conv": rules.ZPlus()}
    assert named.name_map == {"features.*": rules.Flat()}
    assert named.index_map == {2: rules.Gamma(), 0: rules.WSquare()} and named.default == rules.Zero()
    named_composite = composites.EpsilonPlus(layer_map={nn.Conv2d: "flat"}, name_map={"8": "zero"},
                                             index_map={1: "gamma"})
    assert named_composite.layer_map[nn.Conv2d] == rules.Flat() and named_composite.name_map["8"] == rules.Zero()
    assert named_composite.index_map[1] == rules.Gamma()


def test_a_composite_with_rule_names_explains_as_with_rule_objects():
    # Composite(default="epsilon") was refused at the first convolution: "rule 'epsilon' cannot be used on conv layer"
    model = small_cnn()
    x = torch.randn(2, 3, 6, 6)
    by_name = relprop.explain(model, x, target=1, composite=Composite(
        default="epsilon", first="flat", name_map={"6": "z_plus"}))
    by_object = relprop.explain(model, x, target=1, composite=Composite(
        default=rules.Epsilon(), first=rules.Flat(), name_map={"6": rules.ZPlus()}))
    torch.testing.assert_close(by_name.relevance, by_object.relevance, rtol=0, atol=0)
    report = relprop.LRP(model, Composite(default="epsilon", first="flat")).report(x)
    assert {row.module: row.rule for row in report}["0"] == "Flat"


def test_unknown_rule_names_are_refused_with_the_known_ones():
    known = ", ".join(rules.names())
    with pytest.raises(ValueError, match=rf"composite default: unknown rule 'epsilonn' \(did you mean 'epsilon'\?\); "
                                         rf"choose one of {known}"):
        Composite(default="epsilonn")
    with pytest.raises(ValueError, match=r"composite layer_map\['MaxPool2d'\]: unknown rule 'flatt'"):
        Composite(layer_map={nn.MaxPool2d: "flatt"})
    with pytest.raises(ValueError, match=r"composite name_map\['head'\]: unknown rule 'zplus'"):
        composites.Epsilon(name_map={"head": "zplus"})
    with pytest.raises(ValueError, match=r"composite index_map\[0\]: unknown rule 'Box'"):
        Composite(index_map={0: "Box"})
    with pytest.raises(ValueError, match="composite first: unknown rule 'z-box'"):
        Composite(first="z-box")


def test_composite_parameter_typos_list_the_parameters():
    with pytest.raises(TypeError, match=r"composite epsilon_gamma_box has no parameter 'gama' \(did you mean "
                                        r"'gamma'\?\); its parameters: low, high, epsilon, gamma, stabilizer"):
        composites.get("epsilon_gamma_box", gama=1.0)
    with pytest.raises(TypeError, match=r"composite epsilon has no parameter 'epsilonn' \(did you mean 'epsilon'"):
        relprop.LRP(nn.Linear(2, 2), "epsilon", epsilonn=0.1)


def test_map_keys_of_the_wrong_type_are_refused():
    with pytest.raises(TypeError, match="index_map keys are positions"):
        Composite(index_map={"0": rules.Flat()})
    with pytest.raises(TypeError, match="name_map keys are qualified module names"):
        Composite(name_map={0: rules.Flat()})
    import numpy as np

    assert Composite(index_map={np.int64(1): rules.Flat()}).index_map == {1: rules.Flat()}


# ---- the default: chosen by the first linear-like layer run -------------------------------------------------------
def tabular_mlp():
    torch.manual_seed(0)
    return with_biases(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), scale=0.5).eval()


def epsilon_reference(model, x, target, epsilon=1e-6):
    """LRP-epsilon through Linear-ReLU-Linear, from the formula in float64."""
    w1, b1 = model[0].weight.double().detach(), model[0].bias.double().detach()
    w2, b2 = model[2].weight.double().detach(), model[2].bias.double().detach()
    x = x.double()
    z1 = x @ w1.T + b1
    a1 = z1.clamp(min=0)
    z2 = a1 @ w2.T + b2
    relevance_out = torch.zeros_like(z2)
    relevance_out[:, target] = z2[:, target]

    def stabilized(z):
        return z + epsilon * torch.where(z >= 0, 1.0, -1.0)

    relevance_hidden = a1 * ((relevance_out / stabilized(z2)) @ w2)
    return x * ((relevance_hidden / stabilized(z1)) @ w1)


def test_the_default_on_a_dense_first_model_is_epsilon_and_features_differ():
    model = tabular_mlp()
    torch.manual_seed(1)
    rows = torch.randn(4, 5)
    expl = relprop.explain(model, rows, target=1)
    torch.testing.assert_close(expl.relevance.double(), epsilon_reference(model, rows, 1), rtol=1e-5, atol=1e-6)
    assert expl.composite["name"] == "epsilon"
    assert "first linear-like layer run (0) is dense" in expl.composite["chosen"]
    # what the image default does to a table row: every feature gets the same relevance
    flat = relprop.explain(model, rows, target=1, composite="epsilon_plus_flat").relevance
    torch.testing.assert_close(flat, flat[:, :1].expand_as(flat))
    assert (expl.relevance - expl.relevance[:, :1]).abs().max() > 1e-3


def test_the_default_on_a_conv_first_model_is_unchanged():
    model = small_cnn()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6)
    expl = relprop.explain(model, x, target=0)
    torch.testing.assert_close(expl.relevance, relprop.explain(model, x, target=0,
                                                               composite="epsilon_plus_flat").relevance)
    assert expl.composite["name"] == "epsilon_plus_flat"
    assert "is a convolution" in expl.composite["chosen"]
    rules_used = {row.module: row.rule for row in relprop.LRP(model).report(x, target=0)}
    assert rules_used["0"] == "Flat" and rules_used["2"] == "ZPlus"


def test_the_default_takes_parameters_and_follows_each_run():
    dense, conv = tabular_mlp(), small_cnn()
    auto = composites.get("auto", epsilon=0.5)
    dense_first = relprop.LRP(dense, auto)(torch.randn(2, 5), target=0)
    assert dense_first.composite["parameters"]["epsilon"] == 0.5
    assert relprop.LRP(conv, auto)(torch.randn(1, 3, 6, 6), target=0).composite["name"] == "epsilon_plus_flat"
    assert relprop.LRP(dense, auto)(torch.randn(2, 5), target=0).composite["name"] == "epsilon"


def test_explainiverse_composite_maps_sequential_positions_and_falls_back_as_explainiverse_does():
    conv, dense = torch.nn.Conv2d(1, 1, 1), torch.nn.Linear(1, 1)
    composite = composites.Explainiverse(rule="composite", layer_rules={0: "alpha_beta", 6: "z_plus", 8: "composite"})
    rule_at = lambda kind, name, module: composite.rule_for(Site(kind, "f", module, name, 0))
    assert rule_at("conv", "0", conv) == rules.Epsilon(1e-6)  # its alpha-beta has no convolution: epsilon
    assert rule_at("linear", "6", dense) == rules.ZPlus(1e-6, inputs="positive")
    assert rule_at("linear", "8", dense) == rules.Epsilon(1e-6)  # "composite" as a layer's rule: epsilon
    assert rule_at("linear", "2", dense) == rules.Epsilon(1e-6)  # not in layer_rules: epsilon
    assert rule_at("avg_pool", "4", None) is None  # no rule of its own: relprop's default
    only_dense = composites.Explainiverse(rule="alpha_beta", alpha=3.0, beta=2.0)
    assert only_dense.rule_for(Site("linear", "f", dense, "3", 1)) == rules.AlphaBeta(3.0, 2.0, 1e-6,
                                                                                     inputs="positive")


def test_explainiverse_composite_names_its_rules_when_given_another():
    with pytest.raises(ValueError, match="z_plus"):
        composites.get("explainiverse", rule="lrp0")
    with pytest.raises(ValueError, match="composite"):
        composites.get("explainiverse", rule="epsilon", layer_rules={0: "gamma"})
