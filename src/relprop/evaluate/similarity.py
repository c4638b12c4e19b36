"""Similarities between two batches of relevance maps (N, ...), per sample, for randomisation tests.

- Spearman rank correlation: Pearson correlation of the average ranks of the flattened maps.
- SSIM (Wang et al. 2004) as scikit-image computes it for 2-D maps: 7x7 uniform windows, sample covariances,
  K1 = 0.01, K2 = 0.03, data range max - min of both maps, mean over windows that fit inside the map.
- Top-k intersection: |top-k(a) ∩ top-k(b)| / k of the flattened maps.
"""
from __future__ import annotations

import torch

from .localisation import _top


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ra = torch.stack([_average_ranks(row) for row in a.flatten(1).double()])
    rb = torch.stack([_average_ranks(row) for row in b.flatten(1).double()])
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    a, b = a.double(), b.double()
    if a.dim() != 3 or min(a.shape[1:]) < window:
        raise ValueError(f"SSIM compares 2-D maps (N, H, W) of at least {window}x{window}; got {tuple(a.shape)}")
    data_range = torch.maximum(a.flatten(1).amax(1), b.flatten(1).amax(1)) - torch.minimum(
        a.flatten(1).amin(1), b.flatten(1).amin(1))
    data_range = data_range.clamp(min=1e-12).view(-1, 1, 1, 1)
    mean = lambda t: torch.nn.functional.avg_pool2d(t.unsqueeze(1), window, 1)  # noqa: E731
    ux, uy = mean(a), mean(b)
    norm = window * window / (window * window - 1)
    vx, vy = norm * (mean(a * a) - ux * ux), norm * (mean(b * b) - uy * uy)
    vxy = norm * (mean(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def top_k(a: torch.Tensor, b: torch.Tensor, k: int = 100) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    k = min(k, a.shape[1])
    size = torch.full((len(a),), k, device=a.device)
    return (_top(a, size) & _top(b, size)).sum(1).double() / k


SIMILARITIES = {"spearman": spearman, "ssim": ssim, "top_k": top_k}


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata does)."""
    sorted_values, order = values.sort(stable=True)
    new = torch.ones_like(sorted_values, dtype=torch.bool)
    new[1:] = sorted_values[1:] != sorted_values[:-1]
    group = new.cumsum(0) - 1
    positions = torch.arange(1, len(values) + 1, dtype=torch.float64, device=values.device)
    first = torch.zeros(int(group[-1]) + 1, dtype=torch.float64, device=values.device).scatter_reduce(
        0, group, positions, "amin", include_self=False)
    last = torch.zeros_like(first).scatter_reduce(0, group, positions, "amax", include_self=False)
    ranks = torch.empty_like(positions)
    ranks[order] = ((first + last) / 2)[group]
    return ranks
