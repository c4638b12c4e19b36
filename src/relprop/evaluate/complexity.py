"""Complexity: how concentrated relevance is. Computed on |R| per location (channels pooled by ``pooling``).

- Sparseness (Chalasani et al. 2020, "Concise explanations of neural networks using adversarial training"): the
  Gini index of the sorted magnitudes a_(1) <= ... <= a_(d):  G = sum_i (2i - d - 1) a_(i) / (d sum_i a_(i)),
  in [0, 1], higher is sparser.
- Complexity (Bhatt et al. 2020, "Evaluating and aggregating feature-based model explanations"): the entropy of the
  fractional contributions P_i = |R_i| / sum_j |R_j|:  H = -sum_i P_i ln P_i, lower is simpler.
- Effective complexity (Nguyen & Martinez 2020, "On quantitative aspects of model interpretability"): the number of
  locations with |R_i| > eps, lower is simpler.
"""
from __future__ import annotations

import torch

from .inputs import channel_axis, check_input, pooled, relevance_of, sorted_rows
from .result import Result


def _magnitudes(x, relevance, channel_dim, pooling):
    x = check_input(x)
    axis = channel_axis(x, channel_dim)
    return pooled(relevance_of(relevance, x), axis, pooling).abs().flatten(1)


def sparseness(x, relevance, *, channel_dim="auto", pooling="sum") -> Result:
    """Gini index of |R| (Chalasani et al. 2020); samples whose relevance is all zero get NaN.

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".

    Returns:
        A Result: the Gini index per sample, in [0, 1] (higher: more concentrated).
    """
    a = sorted_rows(_magnitudes(x, relevance, channel_dim, pooling)).double()  # sorted in float32, summed in float64
    d = a.shape[1]
    weights = 2 * torch.arange(1, d + 1, dtype=a.dtype, device=a.device) - d - 1
    total = a.sum(1)
    scores = (a * weights).sum(1) / (d * total)
    scores[total == 0] = float("nan")
    return Result("sparseness", scores, True, {"pooling": pooling})


def complexity(x, relevance, *, channel_dim="auto", pooling="sum") -> Result:
    """Entropy of the fractional contributions |R_i| / sum |R| (Bhatt et al. 2020); all-zero relevance gets NaN.

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".

    Returns:
        A Result: the entropy per sample (lower: more concentrated).
    """
    a = _magnitudes(x, relevance, channel_dim, pooling).double()
    total = a.sum(1, keepdim=True)
    p = a / total
    scores = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)
    scores[total.squeeze(1) == 0] = float("nan")
    return Result("complexity", scores, False, {"pooling": pooling})


def effective_complexity(x, relevance, *, eps: float = 1e-5, channel_dim="auto", pooling="sum") -> Result:
    """The number of locations with |R_i| > eps (Nguyen & Martinez 2020).

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        eps: The magnitude a location's relevance must exceed to count.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".

    Returns:
        A Result: the count per sample (lower is better).
    """
    a = _magnitudes(x, relevance, channel_dim, pooling)
    return Result("effective_complexity", (a > eps).sum(1).double(), False, {"eps": eps, "pooling": pooling})
