"""Concept relevance per layer: the relevance R_c = sum over positions of R_L[c] of each channel c of a layer.

A channel (a neuron of a dense layer, a feature of a token layer) is a concept; its relevance is its share of the
explanation at that layer, read from ``lrp(x, target, record=[layer])``. The top concepts are the channels with the
largest relevance.
"""
from __future__ import annotations

import torch

from ..attribution.lrp import LRP
from .conditional import Run, channel_dim, check_layer, parse


def channel_sums(relevance: torch.Tensor, dim: int) -> torch.Tensor:
    """(sample, channel) sums of a layer's relevance (or activation) whose channels lie along dim."""
    moved = relevance.movedim(dim, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1).sum(-1)


def concept_relevance(lrp: LRP, x: torch.Tensor, target=None, layers=()) -> dict[str, torch.Tensor]:
    """Per layer name, the (sample, channel) relevance of every channel for the explained output.

    Args:
        lrp: The LRP explainer (relprop.LRP) of the model; its composite gives the rules.
        x: The input batch.
        target: The class explained, as LRP takes it (None: the predicted class).
        layers: A layer name or a list of them.

    Returns:
        Layer name -> (sample, channel) relevance.

    Raises:
        ValueError: for a layer that does not run, or runs more than once.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    modules = dict(lrp.model.named_modules())
    for name in layers:
        check_layer(modules, name)
    explanation = lrp(x, target, record=layers)
    sums = {}
    for name in layers:
        relevance = explanation.layers.get(name)
        if relevance is None:
            raise ValueError(f"layer {name!r} did not run (or carries no relevance) for this input; pick a layer of "
                             "the forward pass")
        if isinstance(relevance, list):
            raise ValueError(f"layer {name!r} ran {len(relevance)} times in one forward pass; pick a module that "
                             "runs once")
        sums[name] = channel_sums(relevance, channel_dim(modules[name], relevance))
    return sums


def top_concepts(sums: torch.Tensor, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most relevant channels per sample: (relevance, channel index), each (sample, k).

    Args:
        sums: (sample, channel) relevance, e.g. from concept_relevance.
        k: How many channels.

    Returns:
        A pair (relevance, channel index), each (sample, k).

    Raises:
        ValueError: for sums of another shape.

    Example:
        >>> import torch
        >>> from relprop.concepts import top_concepts
        >>> values, channels = top_concepts(torch.tensor([[0.1, 0.7, -0.2, 0.4]]), k=2)
        >>> channels.tolist()
        [[1, 3]]
    """
    if sums.dim() != 2:
        raise ValueError(f"top_concepts takes (sample, channel) sums, got shape {tuple(sums.shape)}")
    k = min(int(k), sums.shape[1])
    return torch.topk(sums, k, dim=1)


def token_relevance(lrp: LRP, x: torch.Tensor, target, layer: str, channels) -> torch.Tensor:
    """(sample, token) relevance of a concept (channels of a token layer, e.g. MLP neurons or attention heads) at
    that layer, per token position: where in the sequence the concept is relevant.

    Args:
        lrp: The LRP explainer (relprop.LRP) of the model; its composite gives the rules.
        x: The input batch.
        target: The class explained, as LRP takes it (None: the predicted class).
        layer: A token layer (output (sample, token, feature)).
        channels: The concept's channels: an int, a list of ints or per-channel weights.

    Returns:
        (sample, token) relevance.

    Raises:
        ValueError: for a layer whose output is not (sample, token, feature).
    """
    explained, selected = parse({layer: channels}, lrp.model, target)
    run = Run(lrp, x, [layer])
    try:
        _, g, _ = run.through([(explained, selected)], run.order(selected))
    finally:
        run.close()
    relevance = run.tensor(layer).detach() * g[0]
    if relevance.dim() != 3:
        raise ValueError(f"layer {layer!r} gives shape {tuple(relevance.shape)}, not (sample, token, feature); "
                         "token relevance needs a layer of a sequence model")
    return relevance.sum(channel_dim(run.module(layer), relevance))
