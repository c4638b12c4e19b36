"""Same numbers as captum's LRP (captum is a test extra, an oracle only), and the one-line change for each of its
calls: its default is LRP-epsilon with epsilon = 1e-9 on every layer it knows, batch norm included as a layer of its
own (relprop: no canonizer). Its LRP delta (output - attribution sum) has relprop's sign, unlike its DeepLift and
IntegratedGradients deltas (attribution sum - output change, tests/attribution)."""
import copy
import warnings

import pytest
import torch
from torch import nn

import relprop
from relprop import rules
from relprop.composites import Composite
from tests.models import with_biases

captum_attr = pytest.importorskip("captum.attr")
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, GammaRule  # noqa: E402


def captum_lrp(model, x, target, layer_rules=None):
    """captum.attr.LRP on a copy (it sets rules on modules), with its convergence delta."""
    model = copy.deepcopy(model)
    for name, rule in (layer_rules or {}).items():
        model.get_submodule(name).rule = rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return captum_attr.LRP(model).attribute(x, target=target, return_convergence_delta=True)


def mlp():
    torch.manual_seed(0)
    return with_biases(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.3),
                                     nn.Linear(8, 3))).double().eval()


class SmallCNN(nn.Module):
    """captum's LRP knows no Flatten module: the model flattens in forward."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(24, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def cnn():
    torch.manual_seed(0)
    return with_biases(SmallCNN()).double().eval()


def relative(a, b):
    return float((a - b.detach()).norm() / b.detach().norm())


@pytest.mark.parametrize("build, shape", [(mlp, (6,)), (cnn, (3, 8, 8))], ids=["mlp", "cnn"])
def test_captum_lrp_default_equals_epsilon_1e9_without_canonizers_with_the_same_delta(build, shape):
    model = build()
    x = torch.randn(4, *shape, dtype=torch.float64)
    target = [0, 2, 1, 2]
    theirs, delta = captum_lrp(model, x, target)
    ours = relprop.explain(model, x, target=target, composite="epsilon", epsilon=1e-9, canonizers=None)
    # captum also puts its 1e-9 on batch norm and pooling, where relprop is exact: 3e-8 apart on the CNN
    assert relative(ours.relevance, theirs) < 1e-6
    assert ours.delta.abs().min() > 1e-3  # biases absorb relevance: the sign of delta is tested
    torch.testing.assert_close(ours.delta, delta.detach(), rtol=1e-6, atol=1e-12)


def test_captum_gamma_rule_without_bias_equals_unsigned_gamma_without_bias():
    model = mlp()  # the Tanh hands signed inputs to the second layer, where the sign conventions differ
    x = torch.randn(4, 6, dtype=torch.float64)
    theirs, _ = captum_lrp(model, x, 1, {"2": GammaRule(gamma=0.5, set_bias_to_zero=True)})
    composite = Composite(layer_map={"linear": rules.Epsilon(1e-9)},
                          name_map={"2": rules.Gamma(0.5, stabilizer=1e-9, zero_bias=True, signed=False)})
    ours = relprop.explain(model, x, target=1, composite=composite, canonizers=None)
    assert relative(ours.relevance, theirs) < 1e-9
    signed = relprop.explain(model, x, target=1, canonizers=None, composite=Composite(
        layer_map={"linear": rules.Epsilon(1e-9)}, name_map={"2": rules.Gamma(0.5, 1e-9, zero_bias=True)}))
    assert relative(signed.relevance, theirs) > 1e-3  # relprop's default gamma is not captum's on signed inputs


def test_captum_alpha1_beta0_without_bias_after_a_relu_equals_z_plus_without_bias():
    model = mlp()
    x = torch.randn(4, 6, dtype=torch.float64)
    theirs, _ = captum_lrp(model, x, 2, {"5": Alpha1_Beta0_Rule(set_bias_to_zero=True)})
    composite = Composite(layer_map={"linear": rules.Epsilon(1e-9)},
                          name_map={"5": rules.ZPlus(stabilizer=1e-9, zero_bias=True)})
    ours = relprop.explain(model, x, target=2, composite=composite, canonizers=None)
    assert relative(ours.relevance, theirs) < 1e-9
