"""Heatmaps with planted strategies, for SpRAy's tests: each map is a blob of relevance at its strategy's place,
shifted by up to 3 pixels, plus noise, times a per-map scale (as the issue on SpRAy at 100,000 maps describes)."""
from __future__ import annotations

import numpy as np


def strategy_maps(count: int, centres, shares, size: int = 32, shift: float = 3.0, noise: float = 0.05,
                  width: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(maps (count, size, size) float32, strategy (count,)): strategy s drawn with probability shares[s]."""
    rng = np.random.default_rng(seed)
    strategy = rng.choice(len(centres), count, p=np.asarray(shares) / np.sum(shares))
    y, x = np.mgrid[0:size, 0:size]
    where = np.asarray(centres, dtype=np.float64)[strategy] + rng.uniform(-shift, shift, (count, 2))
    maps = np.exp(-((y - where[:, :1, None]) ** 2 + (x - where[:, 1:, None]) ** 2) / (2 * width ** 2))
    maps += rng.normal(0, noise, maps.shape)
    return (maps * rng.uniform(0.5, 2.0, (count, 1, 1))).astype(np.float32), strategy


# blob centres (row, column) on 32x32 maps, far enough apart that shifted blobs of two strategies never meet
CENTRES = ((7, 5), (24, 27), (7, 27), (24, 5), (7, 16), (24, 16))  # 11 pixels apart at least


def shortcut_maps(count: int, top: int, left: int, pattern, share: float = 0.35, mark_fraction: float = 0.5,
                  size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(maps (count, size, size) float32, marked (count,) bool): relevance on an object near the centre (shifted by
    up to 6 pixels, of varying width), and on ``share`` of the maps a mark, ``pattern`` (0/1) at (top, left),
    holding ``mark_fraction`` of the object's relevance: a small local artifact the model also looks at."""
    rng = np.random.default_rng(seed)
    marked = rng.uniform(size=count) < share
    y, x = np.mgrid[0:size, 0:size]
    where = size / 2 + rng.uniform(-SHIFT, SHIFT, (count, 2))
    width = rng.uniform(*WIDTH, (count, 1, 1))
    maps = np.exp(-((y - where[:, :1, None]) ** 2 + (x - where[:, 1:, None]) ** 2) / (2 * width ** 2))
    pattern = np.asarray(pattern, dtype=np.float64)
    mark = np.zeros((size, size))
    mark[top:top + pattern.shape[0], left:left + pattern.shape[1]] = pattern / pattern.sum()
    maps += marked[:, None, None] * mark * maps.sum((1, 2), keepdims=True) * mark_fraction
    maps += rng.normal(0, 0.02, maps.shape)
    return (maps * rng.uniform(0.5, 2.0, (count, 1, 1))).astype(np.float32), marked


# marks unlike the demo's checkerboard in the bottom-right corner: (top, left, pattern)
MARKS = {
    "checkerboard 6x6 bottom-right": (25, 25, np.indices((6, 6)).sum(0) % 2),
    "square 3x3 top-left": (1, 1, np.ones((3, 3))),
    "bar 2x9 left edge": (15, 0, np.ones((2, 9))),
    "ring 5x5 top middle": (0, 13, np.pad(np.zeros((3, 3)), 1, constant_values=1)),
    "dot 2x2 right edge": (10, 29, np.ones((2, 2))),
}
SHIFT, WIDTH = 4.0, (1.5, 3.0)  # the object's place and size, about those of the demo's faint shapes (near the centre)
