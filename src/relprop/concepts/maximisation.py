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

from .conditional import channel_dim, check_layer, conditional
from .relevance import channel_sums

GROUP = "concepts"


@dataclass
class References:
    """One layer's reference samples, most relevant (or active) first.

    Attributes:
        layer: The layer's name.
        relevance_index: (channel, k) store positions of the samples where each channel is most relevant.
        relevance_value: (channel, k) that relevance.
        activation_index: (channel, k) store positions of the samples where each channel is most active.
        activation_value: (channel, k) that activation.
        class_relevance: (class, channel) mean relevance per explained class.
        class_count: (class,) samples per class.
    """

    layer: str
    relevance_index: np.ndarray
    relevance_value: np.ndarray
    activation_index: np.ndarray
    activation_value: np.ndarray
    class_relevance: np.ndarray
    class_count: np.ndarray


def maximise(store, layers, k: int = 8, model=None, source=None, batch_size: int = 16, engine: str = "local",
             workers: int | None = None, address: str | None = None, composite=None) -> dict[str, References]:
    """Per layer, the top-k reference samples of every channel over the explained samples of a relprop run store.

    The results are written into the store as well, so reports and later calls read them.

    Args:
        store: The path of a ``relprop run`` store (LRP).
        layers: Layer names.
        k: Reference samples per channel.
        model: The model; None: loaded from the store's model spec.
        source: The data set the store was made from (a relprop.datasets Source); None: opened from the store's data
            spec.
        batch_size: Samples per forward pass.
        engine: "local" (this process) or "ray" (a pool of actors, each writing its own chunks, as ``relprop run``
            does).
        workers: How many Ray actors.
        address: A Ray cluster to join; None: a local Ray.
        composite: The Composite the store's run was given as an object (its name is not in the store); None: the
            store's composite by name, or the built-in one with the rules the store records.

    Returns:
        Layer name -> References.

    Raises:
        ValueError: for no layers, a k that is not positive, an unknown engine, a store without explained samples or
            not made by LRP, a data set of another length, or a composite the store cannot rebuild (or other than
            the one it records).
    """
    from ..datasets import open_store
    from ..datasets.store import writing

    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("name at least one layer, e.g. layers=['features.6']")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive number of reference samples, got {k!r}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be local or ray, got {engine!r}")
    with writing(store):  # not while a run (or another maximisation) writes into it
        opened = open_store(store, mode="r+")
        usable = opened.done & ~opened.failed
        if not usable.any():
            raise ValueError(f"{store} has no explained samples (an empty data set, or a run not yet done); run "
                             "`relprop run` on the data set first")
        recipe, source = store_recipe(opened, model, source)
        work = Pass(store, recipe, source, layers, batch_size, composite)
        work.create_arrays()
        starts = [start for start in range(0, opened.count, opened.chunk) if work.pending(start)]
        if engine == "local":
            for start in starts:
                work.chunk(start)
        elif starts:
            _on_ray(work, starts, workers, address)
        targets = np.asarray(opened["target"][:])
        return {name: _top(opened, name, k, usable, targets) for name in layers}


def store_recipe(opened, model, source):
    """(the model, or the spec each process loads it from, and the data set) of the store's run."""
    from ..datasets import ModelSpec
    from ..datasets.sources import recorded_model_and_source

    if opened.attrs.get("method") != "lrp":
        raise ValueError(f"{opened.path} holds {opened.attrs.get('method')} attributions; concepts need an LRP run")
    model, source, spec = recorded_model_and_source(opened.attrs, opened.path, model, source)
    return (model if spec is None else ModelSpec(spec, None, model)), source


def store_attributor(opened, model, composite=None):
    """The store's LRP attributor (its composite and parameters) on model (a module, or a spec that loads one).

    A store made with a composite given as an object records its class and rules (``composite_rules``), not a name
    to build it by: a built-in composite with the rules recorded is found by them; any other must be given as
    composite, and is checked against the record."""
    from .. import composites
    from ..datasets.pipeline import rules_record
    from ..datasets.work import Settings, build_attributor

    model = model.load() if hasattr(model, "load") else model
    attrs = opened.attrs
    recorded = attrs.get("composite_rules")
    if composite is not None:
        if isinstance(composite, str):
            raise TypeError("composite is the Composite object the store's run was given; a store made with a "
                            "composite by name rebuilds it by itself (leave composite out)")
        if recorded is None:  # made with a composite by name
            recorded = rules_record(composites.get(attrs["composite"], **dict(attrs.get("parameters") or {})))
        if rules_record(composite) != recorded:
            raise ValueError(f"composite {type(composite).__name__} has other rules than the one {opened.path}'s "
                             f"relevance was computed with (recorded: {recorded}); pass that composite")
        return build_attributor(model, Settings("lrp", composite, {}))
    if recorded is not None:
        for name in composites.names():
            try:
                candidate = composites.get(name)
            except (TypeError, ValueError):
                continue  # a composite that needs arguments (explainiverse's rule, say)
            if rules_record(candidate) == recorded:
                return build_attributor(model, Settings("lrp", candidate, {}))
        raise ValueError(f"{opened.path} was made with a composite given as an object ({attrs['composite']}, rules "
                         f"{recorded}), which the store cannot rebuild: pass the same composite (composite=...), or "
                         "make the store with a composite by name (relprop run --composite NAME, or "
                         "datasets.run(..., composite='epsilon_gamma_box'))")
    return build_attributor(model, Settings("lrp", attrs["composite"], dict(attrs.get("parameters") or {})))


class Pass:
    """One pass of relevance maximisation over a store, a chunk at a time: what each engine's worker runs. It
    pickles without its open store and attributor (and a ModelSpec without its module): each process makes its own."""

    def __init__(self, store, recipe, source, layers, batch_size: int, composite=None):
        self.store, self.recipe, self.source, self.layers, self.batch_size = store, recipe, source, layers, batch_size
        self.composite = composite
        self._ready = None

    def __getstate__(self):
        return {**self.__dict__, "_ready": None}

    def ready(self):
        """(open store, attributor, modules, usable samples, targets), made once per process."""
        if self._ready is None:
            from ..datasets import open_store

            opened = open_store(self.store, mode="r+")
            lrp = store_attributor(opened, self.recipe, self.composite)
            modules = dict(lrp.model.named_modules())
            for name in self.layers:
                check_layer(modules, name)
            usable = opened.done & ~opened.failed
            self._ready = opened, lrp, modules, usable, np.asarray(opened["target"][:])
        return self._ready

    def create_arrays(self):
        """Every layer's arrays, sized by one sample's pass, before any engine starts (workers only fill them)."""
        opened, _, _, usable, _ = self.ready()
        missing = [name for name in self.layers if f"{GROUP}/{name}/done" not in opened.group]
        if missing:
            sums, _ = self._channels([int(np.flatnonzero(usable)[0])], missing)
            for name in missing:
                _arrays(opened, name, sums[name].shape[1])

    def pending(self, start) -> list[str]:
        """The layers whose arrays are not yet done for the chunk at start."""
        opened = self.ready()[0]
        stop = min(start + opened.chunk, opened.count)
        return [name for name in self.layers
                if not bool(np.asarray(opened.group[f"{GROUP}/{name}/done"][start:stop]).all())]

    def _channels(self, batch, layers):
        """Per layer, the (sample, channel) relevance sums and activation peaks of the samples in batch."""
        _, lrp, modules, _, targets = self.ready()
        x = torch.stack([self.source.read(i).x for i in batch])
        activations = {}
        handles = [modules[name].register_forward_hook(_keeper(activations, name)) for name in layers]
        try:
            explanation = lrp(x, torch.as_tensor(targets[batch]), record=layers)
        finally:
            for handle in handles:
                handle.remove()
        sums, peaks = {}, {}
        for name in layers:
            relevance = explanation.layers[name]
            dim = channel_dim(modules[name], relevance)
            sums[name] = channel_sums(relevance, dim).numpy()
            peaks[name] = activations[name].movedim(dim, 1).reshape(len(batch), relevance.shape[dim], -1).amax(-1)
        return sums, {name: value.numpy() for name, value in peaks.items()}

    def chunk(self, start):
        """Channel relevance and activation of the chunk's explained samples, written, then the chunk marked done."""
        from ..datasets.store import sync_chunk

        opened, _, _, usable, _ = self.ready()
        layers = self.pending(start)
        stop = min(start + opened.chunk, opened.count)
        indices = [i for i in range(start, stop) if usable[i]]
        groups = {name: opened.group[f"{GROUP}/{name}"] for name in layers}
        relevance = {name: np.full((stop - start, group["relevance"].shape[1]), np.nan, np.float32)
                     for name, group in groups.items()}
        activation = {name: values.copy() for name, values in relevance.items()}
        for first in range(0, len(indices), self.batch_size):
            batch = indices[first:first + self.batch_size]
            sums, peaks = self._channels(batch, layers)
            for name in layers:
                relevance[name][np.asarray(batch) - start] = sums[name]
                activation[name][np.asarray(batch) - start] = peaks[name]
        for name, group in groups.items():
            group["relevance"][start:stop] = relevance[name]
            group["activation"][start:stop] = activation[name]
        # on disk before any done flag says so (local stores), as relprop run's chunks are
        sync_chunk(opened.group, opened.path, [f"{GROUP}/{name}/{array}" for name in groups
                                               for array in ("relevance", "activation")], start)
        for group in groups.values():
            group["done"][start:stop] = True  # last: a chunk cut short is done again by the next call


class _RayChunks:
    """Ray Data's callable class: one Pass per actor, called with batches of chunk starts."""

    def __init__(self, job: Pass):
        self.work = job

    def __call__(self, batch: dict) -> dict:
        for start in batch["start"]:
            self.work.chunk(int(start))
        return {"start": batch["start"]}


def _on_ray(work: Pass, starts, workers, address):
    """The chunks on a pool of Ray actors (joined or started as relprop run does, and mapped again on the nodes
    left when a node dies), each writing its own chunks."""
    from ..datasets.ray_engine import map_on_actors

    map_on_actors(_RayChunks, work, [{"start": start} for start in starts], workers, address, lambda row: None,
                  "chunks finished so far are kept, so the same call resumes", gpus=False)  # a pass runs on the CPU


def _arrays(opened, name, channels):
    """The layer's per-sample arrays, chunked like the store (its done flags last: they mark the group complete)."""
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
    """Conditional heatmaps of one channel on its reference samples.

    Exact: one conditional backward over the samples as a batch, each for its own explained class.

    Args:
        lrp: The LRP explainer (relprop.LRP) of the model; its composite gives the rules.
        source: The data set the store was made from (a relprop.datasets Source); None: opened from the store's data
            spec.
        layer: The layer's qualified module name.
        channel: The channel.
        samples: Store positions of the reference samples.
        targets: The class explained for each sample.
        crop: Return a list of each heatmap cut to the receptive field of the channel's most relevant position
            instead.

    Returns:
        (sample, *input shape) heatmaps, or with crop a list of cut ones.
    """
    if crop:
        return [heatmap for _, heatmap in reference_views(lrp, source, layer, channel, samples, targets)]
    return _conditional_on(lrp, [source.read(int(i)) for i in samples], layer, channel, targets)[1]


def reference_views(lrp, source, layer: str, channel: int, samples, targets) -> list[tuple]:
    """Per reference sample, (its display pixels or None, its conditional heatmap), both cut to the receptive field
    of the channel's most relevant position: what the concept atlas shows."""
    read = [source.read(int(i)) for i in samples]
    x, heatmaps, targets = _conditional_on(lrp, read, layer, channel, targets)
    regions = receptive_fields(lrp, x, targets, layer, channel)
    return [(None if sample.pixels is None else sample.pixels[(...,) + region], heatmap[(...,) + region])
            for sample, heatmap, region in zip(read, heatmaps, regions)]


def _conditional_on(lrp, read, layer, channel, targets):
    """(the samples' input batch, the channel's conditional heatmaps on it, the targets as ints)."""
    x = torch.stack([sample.x for sample in read])
    targets = [int(t) for t in targets]
    return x, conditional(lrp, x, targets, {layer: [int(channel)]}).relevance[0], targets


def receptive_field(lrp, x: torch.Tensor, target, layer: str, channel: int) -> tuple[slice, ...]:
    """The input region (slices of the spatial dims) that the channel's most relevant position of layer sees: where
    the gradient of that one activation with respect to the input is non-zero (x: a batch of one)."""
    return receptive_fields(lrp, x, [int(target)], layer, channel)[0]


def receptive_fields(lrp, x: torch.Tensor, targets, layer: str, channel: int) -> list[tuple[slice, ...]]:
    """receptive_field of every sample of the batch x (each for its own target), from one LRP pass and one gradient:
    the samples are independent, so the gradient of the sum of their chosen activations is each one's own."""
    relevance = lrp(x, list(targets), record=[layer]).layers[layer][:, int(channel)]
    positions = [np.unravel_index(int(sample.argmax()), tuple(sample.shape)) for sample in relevance]
    module = dict(lrp.model.named_modules())[layer]
    kept = []
    handle = module.register_forward_hook(lambda _, args, output: kept.append(output))
    leaf = x.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            lrp.model(leaf)
    finally:
        handle.remove()
    chosen = torch.stack([kept[0][(i, int(channel)) + tuple(int(p) for p in position)]
                          for i, position in enumerate(positions)])
    (gradient,) = torch.autograd.grad(chosen.sum(), leaf)
    regions = []
    for seen in gradient.abs().sum(1) > 0:
        if not bool(seen.any()):
            regions.append(tuple(slice(0, size) for size in seen.shape))
        else:
            regions.append(tuple(slice(int(where.min()), int(where.max()) + 1) for where in seen.nonzero().T))
    return regions
