"""Same numbers as zennit 1.0 for the composites both define (zennit is an optional test extra, an oracle only)."""
import pytest
import torch
import torchvision

import relprop
from tests.models import with_biases

zennit = pytest.importorskip("zennit")
import zennit.rules  # noqa: E402
import zennit.types  # noqa: E402
from zennit import composites as zc  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.torchvision import ResNetCanonizer, SequentialMergeBatchNorm  # noqa: E402

PAIRS = [
    ("epsilon_plus", zc.EpsilonPlus, {}),
    ("epsilon_plus_flat", zc.EpsilonPlusFlat, {}),
    ("epsilon_gamma_box", zc.EpsilonGammaBox, {"low": -3.0, "high": 3.0}),
    ("epsilon_alpha2_beta1", zc.EpsilonAlpha2Beta1, {}),
    ("epsilon_alpha2_beta1_flat", zc.EpsilonAlpha2Beta1Flat, {}),
]


def zennit_relevance(model, composite, x, target):
    # zennit starts from the given output relevance; relprop starts from the logit, so hand zennit the logit too.
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, lambda out: torch.nn.functional.one_hot(target, out.shape[1]) * out)
    return relevance


def compare(model, canonizer, x, ours, theirs, params):
    target = model(x).argmax(1)
    expected = zennit_relevance(model, theirs(canonizers=[canonizer()], **params), x, target)
    got = relprop.explain(model, x, target=target, composite=ours, **params).relevance
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=2e-4)


@pytest.mark.parametrize("ours, theirs, params", PAIRS, ids=[p[0] for p in PAIRS])
def test_small_cnn_with_batch_norm_matches_zennit(ours, theirs, params):
    torch.manual_seed(0)
    model = with_biases(torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(32, 10), torch.nn.ReLU(), torch.nn.Linear(10, 4))).eval()
    compare(model, SequentialMergeBatchNorm, torch.randn(3, 3, 8, 8), ours, theirs, params)


@pytest.mark.slow
@pytest.mark.parametrize("ours, theirs, params", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("name, canonizer", [("vgg11_bn", SequentialMergeBatchNorm), ("resnet18", ResNetCanonizer)])
def test_torchvision_models_match_zennit(name, canonizer, ours, theirs, params):
    torch.manual_seed(0)
    model = with_biases(getattr(torchvision.models, name)()).eval()
    compare(model, canonizer, torch.randn(2, 3, 32, 32), ours, theirs, params)


def signed_mlp():
    """A Tanh hands signed inputs to the second layer, where conventions for negative inputs would show."""
    torch.manual_seed(0)
    return with_biases(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                                           torch.nn.ReLU(), torch.nn.Linear(8, 3)), scale=0.3).double().eval()


RULE_PAIRS = [
    ("epsilon", lambda: zennit.rules.Epsilon(0.1), relprop.rules.Epsilon(0.1)),
    ("epsilon_zero_bias", lambda: zennit.rules.Epsilon(0.1, zero_params="bias"),
     relprop.rules.Epsilon(0.1, zero_bias=True)),
    ("z_plus", lambda: zennit.rules.ZPlus(), relprop.rules.ZPlus()),
    ("alpha_beta", lambda: zennit.rules.AlphaBeta(2.0, 1.0), relprop.rules.AlphaBeta(2.0, 1.0)),
    ("gamma", lambda: zennit.rules.Gamma(0.25), relprop.rules.Gamma(0.25)),
]


@pytest.mark.parametrize("theirs, ours", [p[1:] for p in RULE_PAIRS], ids=[p[0] for p in RULE_PAIRS])
def test_zennit_rules_equal_relprops_on_signed_inputs_and_with_zero_params(theirs, ours):
    model = signed_mlp()
    x = torch.randn(4, 6, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    # zennit's own composites pass relevance through activations, as relprop does; a bare layer map must say so
    layer_map = [(zennit.types.Activation, zennit.rules.Pass()), (torch.nn.Linear, theirs())]
    expected = zennit_relevance(model, zc.LayerMapComposite(layer_map), x, target)
    got = relprop.explain(model, x, target=target, canonizers=None,
                          composite=relprop.composites.Composite(layer_map={"linear": ours})).relevance
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_zennit_one_hot_output_relevance_is_a_float_target_in_relprop():
    # zennit users usually start from a one-hot output relevance (1, not the logit); relprop takes it as a float target
    model = signed_mlp()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 0, 2, 1])
    one_hot = torch.nn.functional.one_hot(target, 3).double()
    with Gradient(model=model, composite=zc.EpsilonPlus()) as attributor:
        _, expected = attributor(x, one_hot)
    got = relprop.explain(model, x, target=one_hot, composite="epsilon_plus", canonizers=None)
    torch.testing.assert_close(got.relevance, expected, rtol=1e-9, atol=1e-12)
    # explained is output * (1 / output), one up to a float64 rounding
    torch.testing.assert_close(got.explained, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
