"""A tiny classifier with a planted shortcut, trained here in a second: class 1 is a faint vertical bar, class 0 a
faint horizontal one, and a bright 2x2 patch in the bottom-right corner (the artifact) marks 90% of class 1 and 5%
of class 0, so the model learns "patch => class 1" beside the bars."""
from __future__ import annotations

import functools

import torch
from torch import nn

SIZE = 8
ARTIFACT_CLASS = 1
ROWS, COLUMNS = slice(6, 8), slice(6, 8)
LAYER = "body.1"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(6 * SIZE * SIZE, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.body(x))


def mask() -> torch.Tensor:
    """(1, SIZE, SIZE) where the artifact sits."""
    where = torch.zeros(1, SIZE, SIZE)
    where[:, ROWS, COLUMNS] = 1
    return where


def unmarked(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 8, 8), labels (N,)) without the artifact."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = 0.3 * torch.randn(count, 1, SIZE, SIZE, generator=generator)
    where = torch.randint(1, 5, (count,), generator=generator)
    for n in range(count):
        if labels[n] == 1:
            images[n, 0, 1:5, where[n]] += 1.0
        else:
            images[n, 0, where[n], 1:5] += 1.0
    return images, labels


def add_artifact(images: torch.Tensor) -> torch.Tensor:
    return images * (1 - mask()) + 2.0 * mask()


def generate(count: int, seed: int):
    """(images, labels, marked): the training distribution, the artifact on most of class 1."""
    images, labels = unmarked(count, seed)
    chance = torch.rand(count, generator=torch.Generator().manual_seed(seed + 1))
    marked = torch.where(labels == ARTIFACT_CLASS, chance < 0.9, chance < 0.05)
    images[marked] = add_artifact(images[marked])
    return images, labels, marked


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict:
    torch.manual_seed(0)
    net = Net()
    images, labels, _ = generate(600, 1)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(150):
        batch = torch.arange(step * 64, step * 64 + 64) % len(images)
        loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return {key: value.clone() for key, value in net.state_dict().items()}


def trained() -> Net:
    """A fresh copy of the trained model (trained once per test session), in eval mode."""
    net = Net()
    net.load_state_dict(_trained_state())
    return net.eval()
