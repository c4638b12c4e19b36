"""One unit of work, shared by every engine: read a chunk's samples, explain them, write the chunk, mark it done.

A chunk is always explained in the same batches (its readable samples in order, batch_size at a time), so the
numbers do not depend on which process, actor or attempt explains it: a resumed or distributed run writes the same
bits as one uninterrupted local run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .sources import Sample, Source
from . import store as store_module
from .store import Shapes


class RunError(Exception):
    """The run cannot go on (the model, data or store do not fit); the message names the fix."""


@dataclass
class Settings:
    """How to explain: picklable, so Ray actors rebuild the same attributor."""

    method: str = "lrp"
    composite: object = "epsilon_plus_flat"  # a name or a relprop Composite (lrp only)
    parameters: dict = field(default_factory=dict)  # the composite's (a name) or the method's parameters
    target: object = "label"  # "label", "predicted" or a class index
    keep: str = "full"
    batch_size: int = 32


@dataclass
class ModelSpec:
    """A model named as on the command line; each Ray actor loads it itself instead of receiving a pickle.

    Attributes:
        spec: The model spec ("demo", "torchvision:NAME", "file.py:FACTORY").
        weights: A weights file, or None.
        module: The model already loaded here (never sent to actors).
    """

    spec: str
    weights: str | None = None
    module: torch.nn.Module | None = None  # already loaded here; never sent to actors

    def load(self) -> torch.nn.Module:
        """The model: the loaded module, else loaded from the spec and weights.

        Returns:
            An nn.Module.
        """
        from ..loading import load_model

        return self.module if self.module is not None else load_model(self.spec, self.weights).model

    def __getstate__(self):
        return {**self.__dict__, "module": None}


def build_attributor(model: torch.nn.Module, settings: Settings):
    if settings.method == "lrp":
        from ..attribution.lrp import LRP

        if isinstance(settings.composite, str):
            return LRP(model, settings.composite, **settings.parameters)
        return LRP(model, settings.composite)
    from .. import attribution  # the one table of methods by name, as `relprop explain` reads it

    if settings.method not in attribution.BY_NAME:
        raise RunError(f"unknown method {settings.method!r}; choose lrp or one of "
                       f"{', '.join(sorted(attribution.BY_NAME))}")
    values = {**attribution.DEFAULTS_BY_NAME.get(settings.method, {}), **settings.parameters}
    try:
        return attribution.BY_NAME[settings.method](model, **values)
    except (TypeError, ValueError) as error:
        raise RunError(f"method {settings.method}: {' '.join(str(error).split())}") from None


@dataclass
class Chunk:
    """A chunk's results as numpy arrays, and the samples that failed (index, id, error)."""

    start: int
    arrays: dict
    failures: list


class ChunkWorker:
    """Reads, explains and writes chunks of one store; one per process or Ray actor."""

    def __init__(self, model, source: Source, settings: Settings, store_path, shapes: Shapes, device=None):
        import zarr

        self.model, self.source, self.settings, self.shapes = model, source, settings, shapes
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.attributor = build_attributor(model, settings)
        self.store_path = store_path
        self.group = zarr.open_group(str(store_path), mode="r+")

    def read(self, start: int, executor=None) -> list:
        """(index, Sample or the error message) for each sample of the chunk starting at start."""
        indices = range(start, min(start + self.shapes.chunk, self.shapes.count))
        reads = executor.map(self._read_one, indices) if executor is not None else map(self._read_one, indices)
        return list(zip(indices, reads))

    def _read_one(self, index: int):
        try:
            sample = self.source.read(index)
        except Exception as error:  # a broken file or a failing user data set: listed and skipped, as in explain
            return " ".join(str(error).split()) or type(error).__name__
        shape = tuple(sample.x.shape)
        if shape != tuple(self.shapes.input_shape):
            return (f"shape {shape} differs from the data set's {tuple(self.shapes.input_shape)} (its first "
                    "readable sample); give inputs of one size (for image folders --size N resizes every image)")
        return sample

    def explain(self, start: int, items: list, on_batch=None) -> Chunk:
        """Explain the readable samples of a chunk in batches of batch_size; failed ones keep the fill values.

        on_batch(samples) is called after each batch (and once for the failed samples), for progress.
        """
        count = len(items)
        arrays = self._empty(count)
        failures = []
        readable = []
        for position, (index, item) in enumerate(items):
            arrays["id"][position] = self.source.id(index)
            if isinstance(item, Sample):
                self._check_label(index, item.label)
                readable.append((position, item))
            else:
                failures.append({"index": index, "id": arrays["id"][position], "error": item})
                arrays["failed"][position] = True
        for first in range(0, len(readable), self.settings.batch_size):
            batch = readable[first:first + self.settings.batch_size]
            self._explain_batch(start, batch, arrays)
            if on_batch is not None:
                on_batch(len(batch))
        if failures and on_batch is not None:
            on_batch(len(failures))
        for position, (index, _) in enumerate(items):  # ids a data set returns become known when read
            arrays["id"][position] = self.source.id(index)
        return Chunk(start, arrays, failures)

    def _check_label(self, index: int, label: int):
        classes = self.shapes.classes
        if not -1 <= label < classes:
            raise RunError(f"sample {index} ({self.source.id(index)}) has label {label} but the model has {classes} "
                           f"classes (0..{classes - 1}); give a data set whose labels are the model's classes, or "
                           "label None (-1) where unknown")
        if label == -1 and self.settings.target == "label":
            raise RunError(f"sample {index} ({self.source.id(index)}) has no label, so --target label cannot "
                           "explain it; use --target predicted (or a class index)")

    def _explain_batch(self, start: int, batch: list, arrays: dict):
        positions = [position for position, _ in batch]
        x = torch.stack([sample.x for _, sample in batch]).to(self.device)
        labels = torch.tensor([sample.label for _, sample in batch], dtype=torch.long)
        target = {"label": labels.to(self.device), "predicted": None}.get(self.settings.target, self.settings.target)
        try:
            explanation = self.attributor(x, target)
        except (ValueError, TypeError, RuntimeError) as error:
            raise RunError(f"explaining samples {start + positions[0]}..{start + positions[-1]} failed: "
                           f"{' '.join(str(error).split())}") from error
        relevance = explanation.relevance.detach().cpu()
        if self.settings.keep == "channels":
            relevance = relevance.sum(1)
        arrays["relevance"][positions] = relevance.numpy().astype(arrays["relevance"].dtype)
        arrays["output"][positions] = explanation.output.detach().reshape(len(batch), -1).float().cpu().numpy()
        arrays["label"][positions] = labels.numpy()
        if explanation.target is not None:
            arrays["target"][positions] = explanation.target.cpu().numpy()
        arrays["explained"][positions] = explanation.explained.detach().float().cpu().numpy()
        arrays["delta"][positions] = explanation.delta.detach().float().cpu().numpy()
        for position, sample in batch:
            if "preview" in arrays and sample.pixels is not None:
                arrays["preview"][position] = preview(sample.pixels, self.shapes.preview[-1])
            for name in self.shapes.extras:
                arrays[f"extra/{name}"][position] = sample.extra[name]

    def _empty(self, count: int) -> dict:
        """Arrays for a chunk, holding the store's fill values (what a failed sample keeps)."""
        arrays = {}
        for name in ("relevance", "output", "label", "target", "explained", "delta", "preview", "failed"):
            if name in self.group:
                array = self.group[name]
                arrays[name] = np.full((count, *array.shape[1:]), array.fill_value, dtype=array.dtype)
        arrays["id"] = np.empty(count, dtype=object)
        for name in self.shapes.extras:
            array = self.group[f"extra/{name}"]
            arrays[f"extra/{name}"] = np.zeros((count, *array.shape[1:]), dtype=array.dtype)
        return arrays

    def write(self, chunk: Chunk, before_done=None):
        """Write every array of the chunk and its checksum row, sync them to disk, then (after before_done, e.g.
        recording failures) write its done flags."""
        stop = chunk.start + len(chunk.arrays["id"])
        for name, values in chunk.arrays.items():
            if name != "failed":
                self.group[name][chunk.start:stop] = values
        self.group["failed"][chunk.start:stop] = chunk.arrays["failed"]
        written = list(chunk.arrays)
        if "checksum" in self.group:
            self.group["checksum"][chunk.start // self.shapes.chunk] = store_module.chunk_checksums(self.group, chunk.arrays)
            written.append("checksum")
        store_module.sync_chunk(self.group, self.store_path, written, chunk.start)
        if before_done is not None:
            before_done(chunk)
        self.group["done"][chunk.start:stop] = np.ones(stop - chunk.start, dtype=bool)


def preview(pixels: torch.Tensor, size: int) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (C, size, size) uint8, area-averaged when shrinking."""
    if pixels.shape[-2:] != (size, size):
        pixels = torch.nn.functional.interpolate(pixels[None].float(), size=(size, size), mode="area")[0]
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _device_of(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
