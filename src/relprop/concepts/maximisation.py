"""Relevance maximisation: for each channel of a layer, the samples of a data set where it is most relevant.

Over the samples of a ``relprop run`` store (same model, composite and explained class per sample), each sample i
gives every channel c of the layer its relevance R_ic = sum over positions of R_L[i, c] and its activation
A_ic = max over positions of a_L[i, c]. Both go into the store, under ``concepts/<layer>/`` as (N, C) arrays
chunked like the store, a chunk marked in ``concepts/<layer>/done`` only after its arrays are written: a call
resumes where an earlier one stopped and reads the samples a chunk at a time. The reference samples of channel c
are the top k of R_ic (and, for comparison, of A_ic); the statistics per class are the mean R_ic over the samples
explained for that class. Both are computed chunk by chunk, merging running top-k lists.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .conditional import channel_dim, conditional
from .relevance import channel_sums

GROUP = "concepts"


@dataclass
class References:
    """One layer's reference samples: (channel, k) sample indices and values, most relevant (or active) first;
    class_relevance (class, channel) mean relevance per explained class, class_count samples per class."""

    layer: str
    relevance_index: np.ndarray
    relevance_value: np.ndarray
    activation_index: np.ndarray
    activation_value: np.ndarray
    class_relevance: np.ndarray
    class_count: np.ndarray


def maximise(store, layers, k: int = 8, model=None, source=None, batch_size: int = 16) -> dict[str, References]:
    """Per layer, the top-k reference samples of every channel over the explained samples of a relprop run store."""
    from ..datasets import open_store

    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("name at least one layer, e.g. layers=['features.6']")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive number of reference samples, got {k!r}")
    opened = open_store(store, mode="r+")
    usable = opened.done & ~opened.failed
    if not usable.any():
        raise ValueError(f"{store} has no explained samples (an empty data set, or a run not yet done); run "
                         "`relprop run` on the data set first")
    lrp, source = _attributor(opened, model, source)
    modules = dict(lrp.model.named_modules())
    for name in layers:
        if name not in modules:
            import difflib

            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"the model has no module named {name!r}{hint}")
    targets = np.asarray(opened["target"][:])
    for start in range(0, opened.count, opened.chunk):
        stop = min(start + opened.chunk, opened.count)
        pending = [name for name in layers if not _chunk_done(opened, name, start, stop)]
        if pending:
            _explain_chunk(opened, lrp, source, pending, modules, start, stop, usable, targets, batch_size)
    return {name: _top(opened, name, k, usable, targets) for name in layers}


def _attributor(opened, model, source):
    from ..datasets import open_source
    from ..datasets.work import Settings, build_attributor

    attrs = opened.attrs
    if attrs.get("method") != "lrp":
        raise ValueError(f"{opened.path} holds {attrs.get('method')} attributions; concepts need an LRP run")
    preprocessing = None
    if model is None:
        if str(attrs["model"]).startswith("python:"):
            raise ValueError(f"{opened.path} was made with a Python model ({attrs['model']}); pass it as model=")
        from ..loading import load_model

        loaded = load_model(attrs["model"])
        model, preprocessing = loaded.model, loaded.preprocessing
    if source is None:
        if str(attrs["data"]).startswith("python:"):
            raise ValueError(f"{opened.path} was made from a Python data set ({attrs['data']}); pass it as source=")
        source = open_source(attrs["data"], preprocessing)
    if len(source) != opened.count:
        raise ValueError(f"the data set has {len(source)} samples but {opened.path} has {opened.count}; give the "
                         "data set the store was made from")
    settings = Settings("lrp", attrs["composite"], dict(attrs.get("parameters") or {}))
    return build_attributor(model, settings), source


def _arrays(opened, name, channels):
    """The layer's per-sample arrays, made on first use (chunked like the store)."""
    group = opened.group.require_group(f"{GROUP}/{name}")
    if "relevance" not in group:
        for array in ("relevance", "activation"):
            group.create_array(array, shape=(opened.count, channels), dtype="float32",
                               chunks=(opened.chunk, channels), fill_value=np.nan)
        group.create_array("done", shape=(opened.count,), dtype="bool", chunks=(opened.chunk,), fill_value=False)
    elif group["relevance"].shape[1] != channels:
        raise ValueError(f"{opened.path} holds {group['relevance'].shape[1]} channels for layer {name!r}, the "
                         f"model gives {channels}; is this the store's model?")
    return group


def _chunk_done(opened, name, start, stop) -> bool:
    path = f"{GROUP}/{name}/done"
    return path in opened.group and bool(np.asarray(opened.group[path][start:stop]).all())


def _explain_chunk(opened, lrp, source, layers, modules, start, stop, usable, targets, batch_size):
    """Channel relevance and activation of the chunk's explained samples, written, then the chunk marked done."""
    indices = [i for i in range(start, stop) if usable[i]]
    parts = {name: [] for name in layers}  # (rows in the chunk, relevance sums, activation peaks) per batch
    for first in range(0, len(indices), batch_size):
        batch = indices[first:first + batch_size]
        x = torch.stack([source.read(i).x for i in batch])
        activations = {}
        handles = [modules[name].register_forward_hook(_keeper(activations, name)) for name in layers]
        try:
            explanation = lrp(x, torch.as_tensor(targets[batch]), record=layers)
        finally:
            for handle in handles:
                handle.remove()
        for name in layers:
            relevance = explanation.layers[name]
            dim = channel_dim(modules[name], relevance)
            peaks = activations[name].movedim(dim, 1).reshape(len(batch), relevance.shape[dim], -1).amax(-1)
            parts[name].append((np.asarray(batch) - start, channel_sums(relevance, dim).numpy(), peaks.numpy()))
    for name in layers:
        if not parts[name]:  # no explained sample here: nothing to write (and the layer's width may be unknown)
            continue
        channels = parts[name][0][1].shape[1]
        relevance = np.full((stop - start, channels), np.nan, np.float32)
        activation = relevance.copy()
        for rows, sums, peaks in parts[name]:
            relevance[rows], activation[rows] = sums, peaks
        group = _arrays(opened, name, channels)
        group["relevance"][start:stop] = relevance
        group["activation"][start:stop] = activation
        group["done"][start:stop] = True  # last: a chunk cut short is done again by the next call


def _keeper(activations, name):
    def keep(module, args, output):
        tensor = output if isinstance(output, torch.Tensor) else output[0]
        if name in activations:
            raise ValueError(f"layer {name!r} runs more than once per forward pass; pick a module that runs once")
        activations[name] = tensor.detach()
    return keep


def _top(opened, name, k, usable, targets) -> References:
    """Top-k per channel by relevance and by activation, and the class statistics, merged chunk by chunk."""
    group = opened.group[f"{GROUP}/{name}"]
    channels = group["relevance"].shape[1]
    classes = int(opened.attrs["classes"])
    best = {array: (np.full((channels, 0), -np.inf, np.float32), np.zeros((channels, 0), np.int64))
            for array in ("relevance", "activation")}
    class_sum = np.zeros((classes, channels), np.float64)
    class_count = np.zeros(classes, np.int64)
    for start in range(0, opened.count, opened.chunk):
        stop = min(start + opened.chunk, opened.count)
        rows = np.flatnonzero(usable[start:stop])
        if not len(rows):
            continue
        for array in best:
            values = np.asarray(group[array][start:stop])[rows].T  # (channel, samples)
            merged_values = np.concatenate([best[array][0], values], axis=1)
            merged_index = np.concatenate([best[array][1], np.broadcast_to(rows + start, values.shape)], axis=1)
            order = np.argsort(-merged_values, axis=1, kind="stable")[:, :k]
            best[array] = (np.take_along_axis(merged_values, order, 1), np.take_along_axis(merged_index, order, 1))
        relevance = np.asarray(group["relevance"][start:stop])[rows]
        np.add.at(class_sum, targets[rows + start], relevance)
        np.add.at(class_count, targets[rows + start], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_mean = (class_sum / class_count[:, None]).astype(np.float32)
    references = References(name, best["relevance"][1], best["relevance"][0], best["activation"][1],
                            best["activation"][0], class_mean, class_count)
    for field in ("relevance_index", "relevance_value", "activation_index", "activation_value", "class_relevance",
                  "class_count"):
        _write(group, field, getattr(references, field))
    return references


def _write(group, field, value):
    """A whole small array, replaced (top-k lists change with k and with newly explained chunks)."""
    if field in group:
        del group[field]
    group.create_array(field, shape=value.shape, dtype=value.dtype)[...] = value


def reference_heatmaps(lrp, source, layer: str, channel: int, samples, targets, crop: bool = False):
    """Conditional heatmaps (sample, *input shape) of one channel on its reference samples (exact: one conditional
    backward over the samples as a batch, each for its own explained class). crop: a list of each heatmap cut to the
    receptive field of the channel's most relevant position instead (see receptive_field)."""
    x = torch.stack([source.read(int(i)).x for i in samples])
    targets = [int(t) for t in targets]
    heatmaps = conditional(lrp, x, targets, {layer: [int(channel)]}).relevance[0]
    if not crop:
        return heatmaps
    return [heatmaps[i][(...,) + receptive_field(lrp, x[i:i + 1], targets[i], layer, channel)]
            for i in range(len(x))]


def receptive_field(lrp, x: torch.Tensor, target, layer: str, channel: int) -> tuple[slice, ...]:
    """The input region (slices of the spatial dims) that the channel's most relevant position of layer sees: where
    the gradient of that one activation with respect to the input is non-zero (x: a batch of one)."""
    relevance = lrp(x, target, record=[layer]).layers[layer][0, int(channel)]
    position = np.unravel_index(int(relevance.argmax()), tuple(relevance.shape))
    module = dict(lrp.model.named_modules())[layer]
    kept = []
    handle = module.register_forward_hook(lambda _, args, output: kept.append(output))
    leaf = x.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            lrp.model(leaf)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(kept[0][(0, int(channel)) + tuple(int(p) for p in position)], leaf)
    seen = gradient[0].abs().sum(0) > 0
    if not bool(seen.any()):
        return tuple(slice(0, size) for size in seen.shape)
    return tuple(slice(int(where.min()), int(where.max()) + 1) for where in seen.nonzero().T)
