"""A procedural image set where the class of each image is decided by one object whose mask is known.

Every image shows a noisy grey background, a few grey distractor shapes of any kind, and exactly one coloured
shape; the class is the kind of the coloured shape. Since the pixels that decide the class are known, a heatmap
can be checked against them. Generation uses only numpy's seeded PCG64 and plain arithmetic, so the same seed
gives the same images on every machine.
"""
from __future__ import annotations

import colorsys

import numpy as np

KINDS = ("circle", "square", "triangle", "cross")
SIZE = 32


def shape_mask(kind: str, center_y: float, center_x: float, radius: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of one shape; radius is half its extent."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = y - center_y, x - center_x
    if kind == "circle":
        return dy * dy + dx * dx <= radius * radius
    if kind == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.8 * radius
    if kind == "triangle":  # apex up, base 0.8 radius below the centre
        return (dy >= -radius) & (dy <= 0.8 * radius) & (np.abs(dx) <= (dy + radius) / 1.8)
    if kind == "cross":
        arm = radius / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
    raise ValueError(f"unknown shape {kind!r}; choose one of {KINDS}")


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(steps):
        shifted = grown.copy()
        shifted[1:] |= grown[:-1]
        shifted[:-1] |= grown[1:]
        shifted[:, 1:] |= grown[:, :-1]
        shifted[:, :-1] |= grown[:, 1:]
        grown = shifted
    return grown


def generate(count: int, seed: int, size: int = SIZE, distractors: tuple[int, int] = (2, 4),
             radius: tuple[float, float] = (4.0, 6.5), saturation: tuple[float, float] = (0.75, 1.0),
             spread: float = 1.0):
    """Generate count images: (images float32 (N, 3, size, size) in [0, 1], labels int64 (N,), masks bool (N, size, size)).

    Other values of radius, saturation and spread draw the same random numbers, so only the object changes.

    Args:
        count: How many images.
        seed: The seed of numpy's PCG64 generator.
        size: The side in pixels.
        distractors: The range (low, high) of grey distractor shapes per image.
        radius: The range of the deciding object's radius, in pixels at size 32.
        saturation: The range of its colour's saturation.
        spread: How far its centre may lie from the image's centre (1: anywhere it fits).

    Returns:
        A tuple (images, labels, masks).

    Example:
        >>> from relprop.demo import generate
        >>> images, labels, masks = generate(3, seed=0)
        >>> images.shape, labels.shape, masks.shape
        ((3, 3, 32, 32), (3,), (3, 32, 32))
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    masks = np.empty((count, size, size), dtype=bool)
    scale = size / 32
    for n in range(count):
        label = int(rng.integers(len(KINDS)))
        background = rng.uniform(0.3, 0.6)
        image = np.full((size, size), background) + rng.normal(0.0, 0.04, (size, size))
        image = np.repeat(image[None], 3, axis=0)
        extent = rng.uniform(*radius) * scale
        center = rng.uniform(extent + 1, size - extent - 1, 2)
        if spread != 1.0:  # only then: size / 2 + (center - size / 2) can differ from center in its last bit
            center = size / 2 + spread * (center - size / 2)
        target = shape_mask(KINDS[label], center[0], center[1], extent, size)
        keep_out = _dilate(target, 2)
        wanted, placed = int(rng.integers(*distractors, endpoint=True)), 0
        for _ in range(50):  # distractors never touch the deciding shape, so its mask stays exact
            if placed == wanted:
                break
            kind = KINDS[int(rng.integers(len(KINDS)))]
            r = rng.uniform(3.5, 6.0) * scale
            y, x = rng.uniform(r, size - r, 2)
            shape = shape_mask(kind, y, x, r, size)
            if (shape & keep_out).any():
                continue
            grey = rng.uniform(0.0, 1.0)
            while abs(grey - background) < 0.2:
                grey = rng.uniform(0.0, 1.0)
            image[:, shape] = grey
            placed += 1
        colour = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(0.7, 1.0))
        image[:, target] = np.asarray(colour)[:, None]
        images[n] = np.clip(image, 0.0, 1.0)
        labels[n] = label
        masks[n] = target
    return images, labels, masks
