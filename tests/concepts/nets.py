"""Small random-init nets for the concept tests (non-zero biases)."""
import torch
from torch import nn

from tests.models import with_biases


def vgg(classes=4, seed=0) -> nn.Sequential:
    """A VGG-like plain Sequential: convolutions, ReLUs, max-pools, a dense head."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, classes))
    return with_biases(model).eval()
