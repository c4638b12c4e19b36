"""Small models and helpers shared by the tests (random init, no downloads)."""
import torch
from torch import nn


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Zero every bias and set batch-norm statistics from the data (mean 0, var = E[x^2]).

    With no biases anywhere, conservative rules must hand the whole explained logit to the input; calibrating
    batch norms keeps activations of order one through deep random nets, so stabilizers absorb nothing.
    """
    handles = []

    def set_stats(module, args):
        inp = args[0].detach()
        dims = [0] + list(range(2, inp.dim()))
        with torch.no_grad():
            module.running_mean.zero_()
            module.running_var.copy_(inp.pow(2).mean(dims) + 1e-3)
            module.weight.fill_(1.0)
            module.bias.zero_()

    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                handles.append(module.register_forward_pre_hook(set_stats))
        model.eval()
        model(x)
    for handle in handles:
        handle.remove()
    return model


def with_biases(model: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Non-zero biases and batch-norm statistics everywhere, so that rules can be told apart."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
                module.bias.copy_((torch.rand(module.bias.shape, generator=generator) - 0.5) * 2 * scale)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_((torch.rand(module.running_mean.shape, generator=generator) - 0.5) * scale)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
    return model


class MLP(nn.Sequential):
    def __init__(self, features=8, hidden=16, classes=3):
        super().__init__(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Dropout(0.1), nn.Linear(hidden, classes))


class UNet(nn.Module):
    """Two-level U-Net: ConvTranspose2d and Upsample on the way up, skips joined with torch.cat."""

    def __init__(self, channels=3, classes=2, width=8):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(2 * width, 2 * width, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(4 * width, width, 3, padding=1), nn.ReLU())
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(d1)
        b = self.bottom(d2)
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.head(u1)


class CNN1d(nn.Sequential):
    def __init__(self, channels=2, classes=4):
        super().__init__(nn.Conv1d(channels, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(8, 8, 3, padding=1), nn.ELU(), nn.AdaptiveAvgPool1d(4), nn.Flatten(),
                         nn.Linear(32, classes))


class CNN3d(nn.Sequential):
    def __init__(self, channels=1, classes=3):
        super().__init__(nn.Conv3d(channels, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(0.1),
                         nn.AvgPool3d(2), nn.Conv3d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool3d(1),
                         nn.Flatten(), nn.Linear(6, classes))


class Block(nn.Module):
    """A residual block written the way users write them: out += identity, shared ReLU module."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width)
        self.layer2 = Block(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
