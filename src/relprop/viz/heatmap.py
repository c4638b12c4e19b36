"""Relevance as images: reduce channels, normalise symmetrically around zero, colour, overlay, lay out in grids.

Shapes: a batch (N, C, H, W), one image (C, H, W) or one map (H, W); results are batches of (H, W) maps or of
(H, W, 3) uint8 RGB images, ready for :func:`relprop.viz.save_image`.
"""
from __future__ import annotations

import numpy as np

from . import colormaps
from .save import save_figure

REDUCTIONS = ("sum", "positive", "absolute")
IMAGE_SLACK = 1e-4  # float images may pass [0, 1] by this much (rounding of x * std + mean), and are clipped


def as_array(values) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a float64 numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _as_batch(relevance) -> np.ndarray:
    values = as_array(relevance)
    if values.ndim == 2:
        return values[None, None]
    if values.ndim == 3:
        return values[None]
    if values.ndim == 4:
        return values
    raise ValueError(f"expected relevance shaped (N, C, H, W), (C, H, W) or (H, W), got {values.shape}; "
                     "for 1-D relevance (signals, table rows) use relprop.viz.bars or relprop.viz.line")


def reduce_channels(relevance, how: str = "sum") -> np.ndarray:
    """(N, H, W) maps: the channel sum, its positive part, or the sum of absolute values over channels.

    Args:
        relevance: Relevance: a batch (N, C, H, W), one image (C, H, W) or one map (H, W); a tensor or array.
        how: "sum", "positive" or "absolute".

    Returns:
        (N, H, W) float64 maps.

    Raises:
        ValueError: for another how.
    """
    values = _as_batch(relevance)
    if how == "sum":
        return values.sum(1)
    if how == "positive":
        return np.clip(values.sum(1), 0.0, None)
    if how == "absolute":
        return np.abs(values).sum(1)
    raise ValueError(f"unknown channel reduction {how!r}; choose one of {', '.join(REDUCTIONS)}")


def normalize(maps, per_sample: bool = True, percentile: float = 100.0) -> np.ndarray:
    """Divide by the largest |value| (or its percentile), per sample or over the batch, into [-1, 1].

    Symmetric: zero stays zero and +v and -v get colours equally far from the middle of a diverging map.
    A map of zeros stays zeros.

    Args:
        maps: (N, H, W) or (H, W) maps.
        per_sample: Normalise each sample by its own largest |value| (False: by the batch's).
        percentile: Normalise by this percentile of |value| instead of the largest (values beyond it saturate).

    Returns:
        Maps in [-1, 1], shaped (N, H, W).

    Example:
        >>> from relprop import viz
        >>> viz.normalize([[2.0, -1.0], [0.0, 0.5]]).tolist()
        [[[1.0, -0.5], [0.0, 0.25]]]
    """
    maps = as_array(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    magnitude = np.abs(maps).reshape(len(maps), -1) if per_sample else np.abs(maps).reshape(1, -1)
    scale = np.percentile(magnitude, percentile, axis=1) if percentile < 100 else magnitude.max(axis=1)
    scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (maps.ndim - 1)))
    return np.clip(maps / scale, -1.0, 1.0)


def colorize(normalized, cmap="bwr") -> np.ndarray:
    """Values in [-1, 1] -> uint8 RGB through a diverging colour map (0 -> its middle colour).

    Args:
        normalized: Values in [-1, 1].
        cmap: A diverging colour map: a name ("bwr", "coldnhot", "seismic", ...) or a matplotlib Colormap.

    Returns:
        uint8 RGB, shaped (..., 3).
    """
    colours = colormaps.get(cmap)(0.5 + 0.5 * as_array(normalized))[..., :3]
    return np.round(colours * 255).astype(np.uint8)


def heatmap(relevance, cmap="bwr", reduce: str = "sum", per_sample: bool = True,
            percentile: float = 100.0) -> np.ndarray:
    """(N, H, W, 3) uint8 heatmaps of relevance.

    Args:
        relevance: Relevance: a batch (N, C, H, W), one image (C, H, W) or one map (H, W); a tensor or array.
        cmap: A diverging colour map: a name ("bwr", "coldnhot", "seismic", ...) or a matplotlib Colormap.
        reduce: How channels become one map: "sum", "positive" (the sum's positive part) or "absolute" (the sum of absolute
            values).
        per_sample: Normalise each sample by its own largest |value| (False: by the batch's).
        percentile: Normalise by this percentile of |value| instead of the largest (values beyond it saturate).

    Returns:
        (N, H, W, 3) uint8 images.

    Example:
        >>> import torch
        >>> from relprop import viz
        >>> viz.heatmap(torch.randn(2, 3, 8, 8)).shape
        (2, 8, 8, 3)
    """
    return colorize(normalize(reduce_channels(relevance, reduce), per_sample, percentile), cmap)


def _as_images(images) -> np.ndarray:
    """Images as (N, H, W, 3) floats in [0, 1]: uint8 arrays are (..., H, W, C), float ones (..., C, H, W)."""
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.dtype == np.uint8:
        array = array.astype(np.float64) / 255
        if array.ndim == 2:
            array = array[..., None]
        array = np.moveaxis(array, -1, -3)
    array = array.astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"expected images shaped (N, C, H, W) or (C, H, W) with 1 or 3 channels (floats in [0, 1]),"
                         f" or uint8 (..., H, W, C); got {array.shape}")
    low, high = float(array.min()), float(array.max())
    if low < -IMAGE_SLACK or high > 1 + IMAGE_SLACK:
        raise ValueError(f"images hold values in [{low:.3g}, {high:.3g}], but overlay draws float images in [0, 1] "
                         "(a normalised input?); pass the pixels before normalisation (x * std + mean) or uint8 "
                         "pixels")
    if array.shape[1] == 1:
        array = np.repeat(array, 3, axis=1)
    return np.clip(np.moveaxis(array, 1, -1), 0.0, 1.0)


def overlay(images, relevance, alpha: float = 0.6, cmap="bwr", reduce: str = "sum", per_sample: bool = True,
            percentile: float = 100.0, by_magnitude: bool = True, grayscale: bool = True) -> np.ndarray:
    """(N, H, W, 3) uint8: the heatmap blended over the images.

    Each pixel is (1 - a) * image + a * colour with a = alpha, scaled by the pixel's normalised |relevance| when
    by_magnitude (so pixels without relevance show the image unchanged).

    Args:
        images: The images: uint8 arrays (..., H, W, C), or floats (..., C, H, W) in [0, 1].
        relevance: Relevance: a batch (N, C, H, W), one image (C, H, W) or one map (H, W); a tensor or array.
        alpha: The heatmap's opacity, in [0, 1].
        cmap: A diverging colour map: a name ("bwr", "coldnhot", "seismic", ...) or a matplotlib Colormap.
        reduce: How channels become one map: "sum", "positive" (the sum's positive part) or "absolute" (the sum of absolute
            values).
        per_sample: Normalise each sample by its own largest |value| (False: by the batch's).
        percentile: Normalise by this percentile of |value| instead of the largest (values beyond it saturate).
        by_magnitude: Scale the opacity by each pixel's normalised |relevance|.
        grayscale: Grey the image first, so the heatmap's colours stand out.

    Returns:
        (N, H, W, 3) uint8 images.

    Raises:
        ValueError: for alpha outside [0, 1], or images and relevance of different sizes.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _as_images(images)
    if grayscale:
        base = np.repeat((base @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
    normalized = normalize(reduce_channels(relevance, reduce), per_sample, percentile)
    if normalized.shape != base.shape[:3]:
        raise ValueError(f"images {base.shape[1:3]} and relevance {normalized.shape[1:]} differ in size; "
                         "overlay needs relevance at the image's resolution")
    colours = colormaps.get(cmap)(0.5 + 0.5 * normalized)[..., :3]
    weight = alpha * (np.abs(normalized) if by_magnitude else np.ones_like(normalized))
    blended = (1 - weight[..., None]) * base + weight[..., None] * colours
    return np.round(blended * 255).astype(np.uint8)


def grid(cells, titles=None, row_titles=None, column_titles=None, path=None, cell_size: float = 2.0,
         suptitle: str | None = None):
    """A matplotlib Figure laying out images in rows (samples) and columns (e.g. input, then one per method).

    Args:
        cells: Rows of (H, W, 3) uint8 images (None leaves a cell empty).
        titles: The same layout of strings, shown above each cell.
        row_titles: Labels of the rows (left).
        column_titles: Labels of the columns (top).
        path: Also save the figure as PNG there.
        cell_size: Each cell's size in inches.
        suptitle: A title over the whole figure.

    Returns:
        The Figure.
    """
    from matplotlib.figure import Figure

    rows = [list(row) for row in cells]
    if not rows or not any(rows):
        raise ValueError("grid needs at least one image")
    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(cell_size * columns, cell_size * len(rows) + (0.4 if suptitle else 0)),
                    layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = row[c] if c < len(row) else None
            if image is None:
                ax.set_axis_off()
                continue
            ax.imshow(image, interpolation="nearest")
            if titles is not None and c < len(titles[r]) and titles[r][c]:
                ax.set_title(titles[r][c], fontsize=8)
            if r == 0 and column_titles is not None and c < len(column_titles):
                ax.set_title(f"{column_titles[c]}\n{ax.get_title()}".strip(), fontsize=8)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=8)
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    if path is not None:
        save_figure(figure, path)
    return figure
