"""The demo's classifier: four convolutions and a global max-pool, small enough to ship (about 130 kB)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .shapes import KINDS, SIZE

WEIGHTS = Path(__file__).with_name("weights.safetensors")
TRAINING = Path(__file__).with_name("training.json")  # how the shipped weights were made and what they reach
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class ShapeNet(nn.Module):
    """The demo's classifier: four 3x3 convolutions with ReLU and two max-pools, a global max-pool and a linear layer.

    Args:
        classes: The number of classes (the four shape kinds).
    """
    def __init__(self, classes: int = len(KINDS)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        """Class scores of a batch.

        Args:
            x: Normalised images (N, 3, H, W).

        Returns:
            (N, classes) logits.
        """
        return self.classifier(self.pool(self.features(x)).flatten(1))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the model's input.

    Args:
        images: (N, 3, H, W) images in [0, 1].

    Returns:
        The normalised images (mean MEAN, std STD per channel).
    """
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def load(weights: str | Path | None = None) -> ShapeNet:
    """The demo model in eval mode, with the shipped weights unless a safetensors file is given.

    Args:
        weights: A safetensors file; None: the shipped weights.

    Returns:
        The ShapeNet.

    Example:
        >>> import torch
        >>> from relprop.demo import generate, load, normalize
        >>> images, labels, masks = generate(4, seed=0)
        >>> model = load()
        >>> model(normalize(torch.from_numpy(images))).shape
        torch.Size([4, 4])
    """
    from safetensors.torch import load_file

    model = ShapeNet()
    model.load_state_dict(load_file(str(weights or WEIGHTS)))
    return model.eval()


__all__ = ["ShapeNet", "load", "normalize", "KINDS", "SIZE", "MEAN", "STD", "WEIGHTS", "TRAINING"]
