"""1-D relevance as charts: bars for table rows (one bar per feature), a line for signals."""
from __future__ import annotations

import numpy as np

from .heatmap import as_array

POSITIVE, NEGATIVE = "#d62728", "#1f77b4"  # red for evidence for the target, blue against, as in the heatmaps


def _new_axes(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height)).add_subplot()


def bars(relevance, names=None, top: int | None = None, ax=None, title: str | None = None):
    """Horizontal bars, largest at the top; top=k keeps the k features of largest |relevance|. Returns the Axes.

    Args:
        relevance: 1-D relevance (a tensor or array; flattened).
        names: A name per feature; None: x[i].
        top: Keep the k features of largest |relevance|.
        ax: The matplotlib Axes to draw into; None: a new figure.
        title: The chart's title.

    Returns:
        The Axes.

    Raises:
        ValueError: when names and relevance differ in length.
    """
    values = as_array(relevance).reshape(-1)
    labels = [str(name) for name in names] if names is not None else [f"x[{i}]" for i in range(len(values))]
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} names for {len(values)} relevance values; give one name per feature")
    order = np.argsort(-np.abs(values), kind="stable")[:top] if top else np.arange(len(values))
    order = order[np.argsort(-values[order], kind="stable")]
    if ax is None:
        ax = _new_axes(6, 0.3 * len(order) + 1)
    shown = values[order][::-1]  # barh draws bottom-up
    ax.barh(np.arange(len(order)), shown, color=[POSITIVE if v >= 0 else NEGATIVE for v in shown])
    ax.set_yticks(np.arange(len(order)), [labels[i] for i in order][::-1])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("relevance")
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax


def line(relevance, ax=None, title: str | None = None, x=None):
    """Relevance along a signal, filled red above zero and blue below. Returns the Axes.

    Args:
        relevance: 1-D relevance (a tensor or array; flattened).
        ax: The matplotlib Axes to draw into; None: a new figure.
        title: The chart's title.
        x: The positions of the values; None: 0, 1, ...

    Returns:
        The Axes.
    """
    values = as_array(relevance).reshape(-1)
    positions = np.arange(len(values)) if x is None else as_array(x).reshape(-1)
    if ax is None:
        ax = _new_axes(8, 2.5)
    ax.plot(positions, values, color="black", linewidth=0.8)
    ax.fill_between(positions, values, 0, where=values >= 0, color=POSITIVE, alpha=0.6, interpolate=True)
    ax.fill_between(positions, values, 0, where=values < 0, color=NEGATIVE, alpha=0.6, interpolate=True)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("relevance")
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax
