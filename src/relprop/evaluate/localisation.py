"""Localisation: how much relevance lands on a ground-truth mask (the object that decides the output).

Relevance is first pooled over channels into one value R_p per location p (``pooling``: Arras et al.'s sum-abs,
sum-pos, max-norm, L1, L2, L2^2, or plain sum; see inputs.POOLINGS). GT is the mask, |GT| its size.

- Relevance mass accuracy (Arras et al. 2022, "CLEVR-XAI"):  R_within / R_total = sum_{p in GT} R_p / sum_p R_p.
- Relevance rank accuracy (Arras et al. 2022): with K = |GT| and P_top-K the K locations of highest R_p,
  |P_top-K ∩ GT| / K.
- Pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop"): 1 if the location of
  maximal R_p lies within ``tolerance`` locations (Chebyshev distance) of the mask, else 0.
- Attribution localisation (Kohlbrenner et al. 2020, "Towards best practice in explaining neural network
  decisions with LRP"): mu = sum_{p in GT} R_p^+ / sum_p R_p^+; ``weighted``: mu * (#locations / |GT|).
- Top-k intersection (Theiner et al. 2022, "Interpretable semantic photo geolocation"): |P_top-k ∩ GT| / k;
  ``concept_influence``: times #locations / |GT|.
- Focus (Arias-Duart et al. 2022, "Focus! Rating XAI methods and finding biases"): on a 2x2 mosaic of images
  whose quadrants Q_t hold the target class, sum_{p in Q_t} R_p^+ / sum_p R_p^+. Quadrants split at H // 2 and
  W // 2; it is attribution localisation with the target quadrants as the mask.
- AUC (Fawcett 2006): the area under the ROC curve of R_p as a score for "p in GT", computed as the Mann-Whitney
  statistic: the share of (inside, outside) pairs whose inside location scores higher, ties counting half (counted
  by binary search of each inside score among the sorted outside scores).
"""
from __future__ import annotations

import torch

from .inputs import channel_axis, check_input, check_masks, location_shape, pooled, relevance_of, sorted_rows
from .result import Result


def _prepare(x, relevance, masks, channel_dim, pooling):
    x = check_input(x)
    axis = channel_axis(x, channel_dim)
    scores = pooled(relevance_of(relevance, x), axis, pooling).flatten(1)  # float32 sorts twice as fast
    return scores, check_masks(masks, x, axis).flatten(1)


def _top(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(N, locations) bool: each sample's k[n] locations of highest score (ties in any order).

    One topk of the largest k instead of a full sort; rows with smaller k keep their first k of it."""
    largest = int(k.max())
    picks = scores.topk(largest, dim=1, sorted=True).indices
    keep = torch.arange(largest, device=scores.device).view(1, -1) < k.view(-1, 1).to(scores.device)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, picks, keep)


def relevance_mass_accuracy(x, relevance, masks, *, pooling="sum_pos", channel_dim="auto") -> Result:
    """Share of the relevance mass inside the mask (Arras et al. 2022); NaN where the total is zero.

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        masks: The ground truth: booleans per location, (N, *locations), True on the object that decides the output.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: the share per sample, in [0, 1] for non-negative relevance.

    Raises:
        ValueError: when masks, relevance and x do not fit together.
    """
    r, gt = _prepare(x, relevance, masks, channel_dim, pooling)
    total = r.sum(1, dtype=torch.float64)
    scores = (r * gt).sum(1, dtype=torch.float64) / total
    scores[total == 0] = float("nan")
    return Result("relevance_mass_accuracy", scores, True, {"pooling": pooling})


def relevance_rank_accuracy(x, relevance, masks, *, pooling="sum_pos", channel_dim="auto") -> Result:
    """Share of the |GT| most relevant locations that lie inside the mask (Arras et al. 2022).

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        masks: The ground truth: booleans per location, (N, *locations), True on the object that decides the output.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: the share per sample, in [0, 1].

    Raises:
        ValueError: when masks, relevance and x do not fit together.
    """
    r, gt = _prepare(x, relevance, masks, channel_dim, pooling)
    size = gt.sum(1)
    return Result("relevance_rank_accuracy", (_top(r, size) & gt).sum(1).double() / size, True, {"pooling": pooling})


def pointing_game(x, relevance, masks, *, tolerance: int = 0, pooling="sum", channel_dim="auto") -> Result:
    """1 where the most relevant location hits the mask (grown by tolerance locations), else 0 (Zhang et al. 2018).

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        masks: The ground truth: booleans per location, (N, *locations), True on the object that decides the output.
        tolerance: How many locations the mask grows by in every direction before the hit is checked.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: 1.0 for a hit, else 0.0, per sample.

    Raises:
        ValueError: for a tolerance on locations of more than three dimensions.
    """
    x = check_input(x)
    axis = channel_axis(x, channel_dim)
    r = pooled(relevance_of(relevance, x), axis, pooling)
    gt = check_masks(masks, x, axis)
    if tolerance:
        if gt.dim() - 1 not in (1, 2, 3):
            raise ValueError("pointing_game tolerance needs 1-D, 2-D or 3-D locations")
        pool = getattr(torch.nn.functional, f"max_pool{gt.dim() - 1}d")
        gt = pool(gt.unsqueeze(1).float(), 2 * tolerance + 1, 1, tolerance).squeeze(1).bool()
    peak = r.flatten(1).argmax(1, keepdim=True)
    hits = gt.flatten(1).gather(1, peak).squeeze(1).double()
    return Result("pointing_game", hits, True, {"tolerance": tolerance, "pooling": pooling})


def attribution_localisation(x, relevance, masks, *, weighted: bool = False, pooling="sum",
                             channel_dim="auto") -> Result:
    """Share of positive relevance inside the mask (Kohlbrenner et al. 2020); NaN where none is positive.

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        masks: The ground truth: booleans per location, (N, *locations), True on the object that decides the output.
        weighted: Multiply each score by the ratio of the image's size to the mask's, rewarding hits on small
            objects (Kohlbrenner et al.'s weighted variant).
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: the share per sample.
    """
    r, gt = _prepare(x, relevance, masks, channel_dim, pooling)
    positive = r.clamp(min=0)
    total = positive.sum(1, dtype=torch.float64)
    scores = (positive * gt).sum(1, dtype=torch.float64) / total
    if weighted:
        scores = scores * gt.shape[1] / gt.sum(1)
    scores[total == 0] = float("nan")
    return Result("attribution_localisation", scores, True, {"weighted": weighted, "pooling": pooling})


QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")


def quadrant_masks(quadrants, height: int, width: int) -> torch.Tensor:
    """(N, height, width) bool: the union of each sample's marked quadrants (QUADRANTS order).

    Args:
        quadrants: (N, 4) flags in QUADRANTS order, True for each quadrant to mark.
        height: The mask's height.
        width: The mask's width.

    Returns:
        (N, height, width) booleans.

    Raises:
        ValueError: when quadrants is not (N, 4).
    """
    marks = torch.as_tensor(quadrants).bool()
    if marks.dim() != 2 or marks.shape[1] != 4:
        raise ValueError(f"quadrants must be (N, 4) flags in the order {', '.join(QUADRANTS)}, got shape "
                         f"{tuple(marks.shape)}")
    top = torch.arange(height).view(-1, 1) < height // 2
    left = torch.arange(width).view(1, -1) < width // 2
    parts = torch.stack([top & left, top & ~left, ~top & left, ~top & ~left])  # (4, H, W)
    return (marks.view(-1, 4, 1, 1) & parts).any(1)


def mosaic(tiles: torch.Tensor) -> torch.Tensor:
    """(N, C, 2H, 2W) mosaics from tiles (N, 4, C, H, W) laid out in QUADRANTS order.

    Args:
        tiles: (N, 4, C, H, W): four images per mosaic, in QUADRANTS order.

    Returns:
        (N, C, 2H, 2W) images.

    Raises:
        ValueError: when tiles is not (N, 4, C, H, W).
    """
    if tiles.dim() != 5 or tiles.shape[1] != 4:
        raise ValueError(f"tiles must be (N, 4, C, H, W): four images per mosaic, got shape {tuple(tiles.shape)}")
    top = torch.cat([tiles[:, 0], tiles[:, 1]], -1)
    return torch.cat([top, torch.cat([tiles[:, 2], tiles[:, 3]], -1)], -2)


def focus(x, relevance, quadrants, *, pooling="sum", channel_dim="auto") -> Result:
    """Share of positive relevance in the quadrants of the target class on mosaics (Arias-Duart et al. 2022).

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        quadrants: (N, 4) flags in QUADRANTS order, True where a quadrant's tile shows the target class.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: the share per mosaic (higher is better).

    Raises:
        ValueError: for inputs that are not images, a row count that differs from x's, or a row with no or all four
            quadrants set.
    """
    x = check_input(x)
    axis = channel_axis(x, channel_dim)
    locations = location_shape(x, axis)
    if len(locations) != 2:
        raise ValueError(f"focus needs images (2-D locations) to cut into 2x2 mosaics, got locations {locations}")
    if len(torch.as_tensor(quadrants)) != len(x):
        raise ValueError(f"quadrants has {len(torch.as_tensor(quadrants))} rows for {len(x)} mosaics; give one row "
                         "of 4 flags per mosaic")
    marks = torch.as_tensor(quadrants).bool()
    inside = quadrant_masks(marks, *locations).to(x.device).flatten(1)
    if bool((~marks.any(1) | marks.all(1)).any()):
        raise ValueError("every mosaic needs at least one quadrant of the target class and one of another class; "
                         f"quadrants {marks.long().tolist()} has rows with none or all four set")
    positive = pooled(relevance_of(relevance, x), axis, pooling).flatten(1).clamp(min=0)
    total = positive.sum(1, dtype=torch.float64)
    scores = (positive * inside).sum(1, dtype=torch.float64) / total
    scores[total == 0] = float("nan")
    return Result("focus", scores, True, {"pooling": pooling})


def top_k_intersection(x, relevance, masks, *, k: int = 1000, concept_influence: bool = False, pooling="sum",
                       channel_dim="auto") -> Result:
    """Share of the k most relevant locations inside the mask (Theiner et al. 2022).

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        masks: The ground truth: booleans per location, (N, *locations), True on the object that decides the output.
        k: How many of the most relevant locations are counted.
        concept_influence: Divide by the mask's share of the image, so a small object found scores higher.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: the share per sample.

    Raises:
        ValueError: when k is not between 1 and the number of locations.
    """
    r, gt = _prepare(x, relevance, masks, channel_dim, pooling)
    if not isinstance(k, int) or not 1 <= k <= r.shape[1]:
        raise ValueError(f"k must be an int between 1 and the number of locations ({r.shape[1]}), got {k!r}")
    scores = (_top(r, torch.full((len(r),), k, device=r.device)) & gt).sum(1).double() / k
    if concept_influence:
        scores = scores * gt.shape[1] / gt.sum(1)
    return Result("top_k_intersection", scores, True, {"k": k, "concept_influence": concept_influence,
                                                       "pooling": pooling})


def auc(x, relevance, masks, *, pooling="sum", channel_dim="auto") -> Result:
    """Area under the ROC curve of relevance as a detector of the mask (Fawcett 2006); ties count half.

    Args:
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        masks: The ground truth: booleans per location, (N, *locations), True on the object that decides the output.
        pooling: How channels are pooled into one value per location: "sum", "sum_abs", "sum_pos", "max_norm", "l1",
            "l2" or "l2_squared".
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: the ROC AUC per sample (0.5: chance).
    """
    r, gt = _prepare(x, relevance, masks, channel_dim, pooling)
    scores = torch.empty(len(r), dtype=torch.float64, device=r.device)
    for n in range(len(r)):  # masks differ in size, so one sample at a time
        inside, outside = r[n][gt[n]], r[n][~gt[n]]
        scores[n] = _higher_pairs(inside, outside) / (len(inside) * len(outside))
    return Result("auc", scores, True, {"pooling": pooling})


def _higher_pairs(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """How many (inside, outside) pairs have the inside value higher, ties counting half."""
    inside, outside = sorted_rows(inside), sorted_rows(outside)  # sorted queries search faster (cache)
    if inside.device.type == "cpu":
        import numpy as np

        def below(side):
            return int(np.searchsorted(outside.numpy(), inside.numpy(), side).sum())
    else:
        def below(side):
            return int(torch.searchsorted(outside, inside, side=side).sum())
    return (below("left") + below("right")) / 2
