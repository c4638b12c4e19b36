"""Where is the artifact in each sample? The CAV's conditional relevance (Reveal to Revise, Pahde et al. 2023).

The explained quantity is the sample's coordinate along the CAV above the clean level, v . h(x) - v . mean(clean):
how much of the artifact the layer sees. LRP takes it back to the input; the pixels that hold its positive
relevance are the artifact. A mask per sample: the positive relevance summed over channels, smoothed over 3 x 3
pixels, at least ``threshold`` times its largest value. Masks let the artifact be cut from one sample and pasted into
another (:func:`relprop.correct.metrics.paste`).
"""
from __future__ import annotations

import torch

from .cav import CAV, layer_module


class AlongCAV(torch.nn.Module):
    """The model read at the CAV's layer: output (N, 1) = v . h(x) - clean level."""

    def __init__(self, model: torch.nn.Module, cav: CAV):
        super().__init__()
        self.model, self.cav = model, cav

    def forward(self, x):
        kept = []
        handle = layer_module(self.model, self.cav.layer).register_forward_hook(
            lambda module, arguments, output: kept.append(output))
        try:
            self.model(x)
        finally:
            handle.remove()
        if not kept:
            raise ValueError(f"layer {self.cav.layer!r} did not run in the forward pass")
        return (self.cav.coordinate(kept[0]) - self.cav.clean_level.to(kept[0]))[:, None]


def cav_relevance(model: torch.nn.Module, x: torch.Tensor, cav: CAV, composite="epsilon_plus_flat",
                  batch_size: int = 32) -> torch.Tensor:
    """Relevance (shaped like x) of each sample's coordinate along the CAV, by LRP."""
    from ..attribution.lrp import LRP

    lrp = LRP(AlongCAV(model, cav), composite)
    return torch.cat([lrp(x[start:start + batch_size], 0).relevance for start in range(0, len(x), batch_size)])


def masks(relevance: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, 1, H, W) float 0/1: where the smoothed positive relevance reaches threshold times its maximum."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a share of each sample's largest relevance, in (0, 1]; got {threshold}")
    maps = relevance.sum(1, keepdim=True).clamp(min=0)
    smooth = torch.nn.functional.avg_pool2d(maps, 3, stride=1, padding=1, count_include_pad=False)
    peak = smooth.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    return ((smooth >= threshold * peak) & (peak > 0)).float()


def localise(model, x: torch.Tensor, cav: CAV, threshold: float = 0.5, composite="epsilon_plus_flat"):
    """(N, 1, H, W) masks of the artifact in each sample."""
    return masks(cav_relevance(model, x, cav, composite), threshold)


__all__ = ["AlongCAV", "cav_relevance", "masks", "localise"]
