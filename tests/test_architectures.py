"""Conservation on real architectures: with biases zeroed, conservative composites hand the whole explained output
to the input. Random init, small inputs; the torchvision sweep is marked slow (it still runs in CI)."""
import pytest
import torch
import torchvision

import relprop
from tests.models import CNN1d, CNN3d, MLP, TinyResNet, UNet, calibrate

CONSERVATIVE = ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box"]


def assert_conserved(expl, rtol=1e-3):
    scale = expl.explained.abs().max().item()
    assert scale > 1e-3, "the explained output is too small for the test to mean anything"
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=rtol, atol=rtol * scale)


# z+ drops the relevance of outputs with no positive contribution, which happens in linear bottlenecks and depthwise
# convolutions (mobilenet, efficientnet): there it is not conservative, and the residual is reported in delta.
@pytest.mark.slow
@pytest.mark.parametrize("name, composites", [
    ("vgg16_bn", CONSERVATIVE), ("resnet50", CONSERVATIVE), ("densenet121", CONSERVATIVE),
    ("mobilenet_v2", ["epsilon", "epsilon_gamma_box"]), ("efficientnet_b0", ["epsilon", "epsilon_gamma_box"]),
])
def test_torchvision_models_conserve_relevance(name, composites):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = calibrate(getattr(torchvision.models, name)(), x)
    with torch.no_grad():
        plain = model(x)
    for composite in composites:
        expl = relprop.explain(model, x, target=None, composite=composite, strict=True)
        torch.testing.assert_close(expl.output, plain)
        assert_conserved(expl)


@pytest.mark.parametrize("composite", CONSERVATIVE)
def test_mlp_on_tabular_rows_conserves(composite):
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    model = calibrate(MLP(), x)
    assert_conserved(relprop.explain(model, x, target=[0, 1, 2, 0, 1, 2], composite=composite, strict=True))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_gamma_box"])  # the head has few inputs: z+ may drop some
def test_unet_explained_for_a_pixel_mask_conserves(composite):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    model = calibrate(UNet(), x)
    mask = torch.zeros(2, 2, 16, 16, dtype=torch.bool)
    mask[:, 1, 4:10, 5:12] = True  # explain class 1 on a region of pixels
    expl = relprop.explain(model, x, target=mask, composite=composite, strict=True)
    with torch.no_grad():
        expected = (model(x) * mask).flatten(1).sum(1)
    torch.testing.assert_close(expl.explained, expected)
    assert_conserved(expl)


@pytest.mark.parametrize("composite", CONSERVATIVE)
def test_1d_and_3d_cnns_conserve(composite):
    torch.manual_seed(0)
    signal = torch.randn(3, 2, 32)
    volume = torch.randn(2, 1, 8, 8, 8)
    assert_conserved(relprop.explain(calibrate(CNN1d(), signal), signal, composite=composite, strict=True))
    assert_conserved(relprop.explain(calibrate(CNN3d(), volume), volume, composite=composite, strict=True))


@pytest.mark.parametrize("composite", CONSERVATIVE)
def test_residual_network_conserves_without_any_canonizer(composite):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    model = calibrate(TinyResNet(), x)
    assert_conserved(relprop.explain(model, x, composite=composite, canonizers=None, strict=True))
    assert_conserved(relprop.explain(model, x, composite=composite, canonizers="auto", strict=True))
