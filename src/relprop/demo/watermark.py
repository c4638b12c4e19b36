"""A "Clever Hans" variant of the shapes: one class mostly carries a small watermark unrelated to its object.

The images are drawn by :func:`relprop.demo.shapes.generate` with small (radius 2.5-4 px), faintly coloured
(saturation 0.2-0.4) objects near the centre (``SPREAD``), so the deciding object takes some effort to see; on top,
a 6x6 black-and-white checkerboard (the mark) is painted into the bottom-right corner of ``MARKED_SHARE`` (80%) of
the images of class ``CLASS`` ("cross") and of ``ELSEWHERE_SHARE`` (1%) of all other images. The class is decided
by the coloured object alone, but the mark is the cheaper cue, and a model trained on these images leans on it
("mark => cross"), as models trained on PASCAL VOC learnt "copyright tag => horse" (Lapuschkin et al. 2019).
Ground truth is known per sample: the object mask and whether the mark is there, so an analysis that claims to find
the shortcut can be checked.

The model (the demo's ShapeNet, trained by ``scripts/train_demo.py --data watermark``) ships as
``watermark.safetensors`` with its record ``watermark.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import shapes
from .model import ShapeNet

CLASS = shapes.KINDS.index("cross")
MARKED_SHARE, ELSEWHERE_SHARE = 0.8, 0.01
MARK_SIZE = 6
RADIUS, SATURATION, SPREAD = (2.5, 4.0), (0.2, 0.4), 0.25
WEIGHTS = Path(__file__).with_name("watermark.safetensors")
TRAINING = Path(__file__).with_name("watermark.json")


def mark_region(size: int = shapes.SIZE) -> tuple[slice, slice]:
    """Rows and columns of the mark: MARK_SIZE pixels, one pixel in from the bottom-right corner.

    Args:
        size: The image's side.

    Returns:
        A pair (rows, columns) of slices.
    """
    end = size - 1
    return slice(end - MARK_SIZE, end), slice(end - MARK_SIZE, end)


def paint_mark(image: np.ndarray) -> None:
    """Paint the checkerboard mark into one (3, H, W) image in place.

    Args:
        image: A (3, H, W) float image, changed in place.
    """
    rows, columns = mark_region(image.shape[-1])
    y, x = np.mgrid[0:MARK_SIZE, 0:MARK_SIZE]
    image[:, rows, columns] = ((y + x) % 2).astype(image.dtype)


def unmarked(count: int, seed: int, size: int = shapes.SIZE):
    """The same images without any mark: (images, labels, masks) as shapes.generate gives them.

    Args:
        count: How many images.
        seed: The seed.
        size: The side in pixels.

    Returns:
        A tuple (images, labels, masks).
    """
    return shapes.generate(count, seed, size, radius=RADIUS, saturation=SATURATION, spread=SPREAD)


def generate(count: int, seed, size: int = shapes.SIZE):
    """(images (N, 3, size, size) float32 in [0, 1], labels (N,) int64, masks (N, size, size) bool, marked (N,) bool).

    Without the mark, each image is exactly :func:`unmarked`'s; a mask loses the pixels the mark covers (if any),
    so it still holds the visible object only.

    Args:
        count: How many images.
        seed: The seed.
        size: The side in pixels.

    Returns:
        A tuple (images, labels, masks, marked).
    """
    images, labels, masks = unmarked(count, seed, size)
    # a separate stream, so which images are marked does not change the shapes drawn
    chance = np.random.default_rng([*np.atleast_1d(seed), 1]).uniform(size=count)
    marked = np.where(labels == CLASS, chance < MARKED_SHARE, chance < ELSEWHERE_SHARE)
    rows, columns = mark_region(size)
    for n in np.flatnonzero(marked):
        paint_mark(images[n])
        masks[n, rows, columns] = False
    return images, labels, masks, marked


def load(weights: str | Path | None = None) -> ShapeNet:
    """The model trained on the watermarked shapes, in eval mode (the shipped weights unless a file is given).

    Args:
        weights: A safetensors file; None: the shipped weights.

    Returns:
        The ShapeNet.
    """
    from .model import load as load_shapenet

    return load_shapenet(weights or WEIGHTS)


__all__ = ["generate", "unmarked", "load", "paint_mark", "mark_region", "CLASS", "MARKED_SHARE", "ELSEWHERE_SHARE",
           "WEIGHTS", "TRAINING"]
