"""Masks on the way down: LRP with the relevance at named layers kept only on some channels, or re-weighted.

At each masked layer L the backward signal becomes g_L * m_L (m: 1 on kept channels, 0 elsewhere, or any per-channel
weights), so R_L = a_L * g_L * m_L is what goes on down; paths that bypass L (skip connections) are untouched. The
relevance that remains at each masked layer is reported, so conservation can be read for what is left.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attribution.lrp import LRP
from .conditional import Run, channel_dim, channel_mask, parse


@dataclass
class Masked:
    """What masked() returns.

    Attributes:
        relevance: The input heatmap.
        explained: The relevance at the output.
        remaining: Per masked layer, the relevance (per sample) that its mask let through.
    """

    relevance: torch.Tensor
    explained: torch.Tensor
    remaining: dict


def masked(lrp: LRP, x: torch.Tensor, target=None, masks=None) -> Masked:
    """LRP of x where masks (layer name -> kept channels, or per-channel float weights) act on the way down.

    Args:
        lrp: The LRP explainer (relprop.LRP) of the model; its composite gives the rules.
        x: The input batch.
        target: The class explained, as LRP takes it (None: the predicted class).
        masks: Layer name -> kept channels (ints), or per-channel float weights.

    Returns:
        A Masked.

    Raises:
        ValueError: for empty masks, an unknown layer, channels out of range, or a masked layer no relevance reaches.
    """
    if not isinstance(masks, dict) or not masks:
        raise ValueError("masks must be a non-empty dict of layer name -> channels to keep (ints) or per-channel "
                         "weights (a float tensor), e.g. {'features.6': [3, 7]}")
    _, selected = parse(masks, lrp.model, target)
    run = Run(lrp, x, [name for name, _ in selected])
    try:
        run.order(selected)
        remaining = {}
        for name, selection in selected:
            tensor = run.tensor(name)
            mask = channel_mask(name, selection, tensor, channel_dim(run.module(name), tensor))
            value = tensor.detach()

            def apply(g, name=name, mask=mask, value=value):
                kept = g * mask
                remaining[name] = (value * kept).reshape(len(value), -1).sum(1)
                return kept

            tensor.register_hook(apply)
        g = run.start(target)
        relevance = run.input_relevance(run.output, g, batched=False)
    finally:
        run.close()
    explained = (run.output.detach() * g).reshape(len(x), -1).sum(1)
    for name, _ in selected:
        if name not in remaining:
            raise ValueError(f"no relevance reached layer {name!r} on the way down; mask a layer that the "
                             "explained output depends on")
    return Masked(relevance, explained, remaining)
