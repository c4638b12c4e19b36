"""Small random models with non-zero biases for the attribution tests, and the checks they share."""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


def captum(attributor, *args, **kwargs):
    """attributor.attribute(...) without captum's notes about hooks and gradient requirements."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return attributor.attribute(*args, **kwargs)


def close(a, b, scale=None):
    scale = b.abs().max() if scale is None else scale
    assert (a - b).abs().max() <= 1e-5 * scale + 1e-7, float((a - b).abs().max())


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero biases and batch-norm statistics, so that nothing conserves relevance by accident; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def vgg_style(seed: int = 0) -> nn.Sequential:
    """VGG-style, each ReLU module used once; its max-pool sits between convolutions, where captum handles it."""
    torch.manual_seed(seed)
    return randomize(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 5),
    ), seed)


def vgg_relu_pool(seed: int = 0, pool=None) -> nn.Sequential:
    """VGG proper: ReLU straight into max-pool (captum's DeepLift then skips its own max-pool rule); 16x16 input,
    pools that halve it."""
    torch.manual_seed(seed)
    return randomize(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), pool or nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 8 * 8, 4),
    ), seed)


class SharedReLUNet(nn.Module):
    """ResNet-style: one ReLU module used three times, an in-place ReLU, a functional ReLU, a residual sum."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 5)
        randomize(self, seed)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(x)))
        out = self.conv3(out) + x
        out = self.relu(out)
        out = torch.relu(out - 0.1)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def reference(self, x, relu):
        """The same forward with each ReLU replaced by ``relu(z, site)``, for formula references."""
        x = relu(self.bn1(self.conv1(x)), 0)
        out = relu(self.bn2(self.conv2(x)), 1)
        out = relu(self.conv3(out) + x, 2)
        out = relu(out - 0.1, 3)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class FunctionalNet(nn.Module):
    """Activations written in forward: GELU, a sigmoid gate (a product of activations), a square, a max-pool."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        randomize(self, seed)

    def forward(self, x):
        x = F.gelu(self.conv1(x))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        h = self.conv2(x)
        x = h * torch.sigmoid(h) + 0.1 * x ** 2
        return self.fc(F.max_pool2d(x, 2).flatten(1))
