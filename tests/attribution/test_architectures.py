"""Completeness on the core issue's architectures: DeepLift's delta and the integrated-gradients residual are small
next to the explained output change (random init with biases, small inputs; marked slow, run in CI)."""
import pytest
import torch
import torchvision

from relprop.attribution import DeepLift, IntegratedGradients
from tests.models import CNN1d, CNN3d, MLP, UNet, with_biases


def _case(name):
    torch.manual_seed(0)
    if name == "mlp":
        return with_biases(MLP()).eval(), torch.randn(3, 8), None
    if name == "unet":
        mask = torch.zeros(2, 2, 16, 16, dtype=torch.bool)
        mask[:, 1, 4:10, 5:12] = True
        return with_biases(UNet()).eval(), torch.randn(2, 3, 16, 16), mask
    if name == "cnn1d":
        return with_biases(CNN1d()).eval(), torch.randn(2, 2, 32), None
    if name == "cnn3d":
        return with_biases(CNN3d()).eval(), torch.randn(2, 1, 8, 8, 8), None
    return with_biases(getattr(torchvision.models, name)(num_classes=10)).eval(), torch.randn(2, 3, 32, 32), None


ARCHITECTURES = ["mlp", "unet", "cnn1d", "cnn3d", "vgg11_bn", "resnet18", "densenet121", "mobilenet_v2",
                 "efficientnet_b0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_deeplift_and_integrated_gradients_are_complete(name):
    model, x, target = _case(name)
    baseline = torch.zeros_like(x)
    with torch.no_grad():
        out, out0 = model(x), model(baseline)
    target = out.argmax(1) if target is None else target
    change = ((out - out0)[torch.arange(len(x)), target] if target.dtype != torch.bool
              else ((out - out0) * target).flatten(1).sum(1))
    scale = change.abs().max().item()
    deeplift = DeepLift(model)(x, target=target)
    assert deeplift.delta.abs().max().item() <= 1e-3 * scale + 1e-5, (name, deeplift.delta, change)
    ig = IntegratedGradients(model, steps=64)(x, target=target)
    assert ig.delta.abs().max().item() <= 0.05 * scale + 1e-4, (name, ig.delta, change)
