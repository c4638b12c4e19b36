"""Heatmaps from anywhere into a store: ``from_arrays`` writes pre-computed relevance (another tool's, a NumPy file,
an HDF5 file of CoRelAy/ViRelAy layout) with its labels into the layout SpRAy, its report and the ViRelAy export
read, so nothing has to be written by hand.

The minimum is relevance (N, C, H, W), (N, H, W) or (N, D) and integer labels (N,) (-1: unknown); images (for
previews in reports and ViRelAy), ids, class names and the model's outputs are optional. Arrays are read and
written one chunk of samples at a time, so a memory-mapped ``.npy`` or an HDF5 dataset larger than memory works.
The store is written beside its path and moved into place complete: an interrupted import leaves nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import store as stores

CHUNK_BYTES = 4 * 2**20  # relevance per chunk, as `relprop run` chooses by default
PREVIEW = 64  # the largest preview side, as `relprop run` stores it


def from_arrays(store, relevance, labels, *, images=None, ids=None, class_names=None, output=None,
                chunk: int | None = None, overwrite: bool = False, model: str = "imported",
                method: str = "imported", data: str = "imported") -> stores.Store:
    """Write a store at ``store`` holding these heatmaps (every sample done); returns it opened for reading.

    The store then feeds SpRAy, the reports and ViRelAy as one that ``relprop run`` wrote.

    Args:
        store: The new store's folder.
        relevance: Heatmaps (N, C, H, W), (N, H, W) or vectors (N, D).
        labels: One int per heatmap (-1 for unknown), or (N, classes) one-hot or scores.
        images: (N, C, H, W) floats in [0, 1] or uint8, shown as previews (at most 64 pixels a side).
        ids: A name per sample.
        class_names: One per class.
        output: The model's outputs (N, classes), for the predicted class in reports; without it they are NaN.
        chunk: Samples per store chunk.
        overwrite: Replace an existing store.
        model: The model's name recorded in the store.
        method: The method's name recorded in the store.
        data: The data set's name recorded in the store.

    Returns:
        The Store.

    Raises:
        ValueError: for arrays of the wrong shape or length.
        StoreError: when the store exists (without overwrite).
    """
    count = len(relevance)
    labels = np.asarray(labels)
    if labels.ndim == 2:  # one-hot or scores per class, as HDF5 files of CoRelAy's tools keep them
        labels = labels.argmax(1)
    if labels.shape != (count,) or labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be {count} integers (one per heatmap; -1 for unknown), got shape "
                         f"{labels.shape} of {labels.dtype}")
    labels = labels.astype(np.int64)
    sample_shape = tuple(relevance.shape[1:])
    if count == 0 or len(sample_shape) not in (1, 2, 3):
        raise ValueError(f"relevance must be (N, C, H, W), (N, H, W) or (N, D) with N >= 1, got {relevance.shape}")
    for name, array in (("images", images), ("ids", ids), ("output", output)):
        if array is not None and len(array) != count:
            raise ValueError(f"{name} has {len(array)} entries for {count} heatmaps; give one per heatmap")
    if output is not None and np.ndim(output) != 2:
        raise ValueError(f"output must be (N, classes), got shape {np.shape(output)}")
    classes = _class_count(labels, class_names, output)
    if images is not None and (np.ndim(images) != 4 or (len(sample_shape) >= 2 and
                                                         tuple(images.shape[-2:]) != sample_shape[-2:])):
        raise ValueError(f"images must be (N, C, H, W) with the heatmaps' height and width {sample_shape[-2:]}, "
                         f"got {np.shape(images)}")
    keep, input_shape = ("channels", (1, *sample_shape)) if len(sample_shape) == 2 else ("full", sample_shape)
    per_sample = int(np.prod(sample_shape)) * 4
    chunk = chunk or max(1, min(count, CHUNK_BYTES // max(per_sample, 1)))
    preview = None if images is None else (images.shape[1], *(min(PREVIEW, side) for side in images.shape[2:]))
    shapes = stores.Shapes(count, chunk, input_shape, classes, preview, {})
    attributes = {"model": model, "weights_sha256": None, "method": method, "composite": None, "parameters": {},
                  "target": "label", "keep": keep, "data": data,
                  "class_names": None if class_names is None else [str(name) for name in class_names]}

    path = Path(store)
    stores.check_path(path)
    if stores.read_attributes(path) is not None:
        if not overwrite:
            raise stores.StoreError(f"{path} is a store already; give a new path, or overwrite=True (--overwrite) to "
                                    "replace it")
        stores.remove(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.import.", dir=path.resolve().parent))
    try:
        built = staging / path.name
        stores.create(built, attributes, shapes, keep)
        _fill(built, count, chunk, relevance, labels, images, ids, output)
        if path.exists():
            path.rmdir()  # an empty folder the user made for the store
        os.replace(built, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stores.open_store(path)


def _class_count(labels: np.ndarray, class_names, output) -> int:
    if output is not None:
        classes = int(np.shape(output)[1])
    elif class_names is not None:
        classes = len(class_names)
    else:
        classes = int(labels.max()) + 1 if (labels >= 0).any() else 1
    if labels.max() >= classes:
        raise ValueError(f"label {int(labels.max())} is out of range for {classes} classes; give class_names or "
                         "output for every class")
    return classes


def _fill(path: Path, count: int, chunk: int, relevance, labels, images, ids, output) -> None:
    """Write every chunk of samples, then mark them all done (after everything else, as the layout requires)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        group["relevance"][start:stop] = np.asarray(relevance[start:stop], dtype=np.float32)
        group["label"][start:stop] = labels[start:stop]
        group["target"][start:stop] = labels[start:stop]
        group["id"][start:stop] = np.array([str(i) for i in range(start, stop)] if ids is None else
                                           [str(name) for name in ids[start:stop]])
        if output is not None:
            scores = np.asarray(output[start:stop], dtype=np.float32)
            group["output"][start:stop] = scores
            known = labels[start:stop] >= 0
            explained = np.full(stop - start, np.nan, dtype=np.float32)
            explained[known] = scores[known, labels[start:stop][known]]
            group["explained"][start:stop] = explained
        if images is not None:
            group["preview"][start:stop] = previews(np.asarray(images[start:stop]), group["preview"].shape[2:])
        if "checksum" in group:  # each chunk proves its values, as relprop run's chunks do (read back as stored)
            names = stores.checked_names(group)
            group["checksum"][start // chunk] = stores.chunk_checksums(
                group, {name: group[name][start:stop] for name in names})
    group["done"][:] = True


def previews(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, C, P, P) uint8 from images in [0, 1] (floats) or 0..255 (uint8): relprop run's previews (work.preview)."""
    import torch

    from .work import preview

    values = torch.from_numpy(images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0))
    return np.stack([preview(image, size[0]) for image in values])


def read_h5(relevance_file, images_file=None) -> dict:
    """Arrays for from_arrays from HDF5 files of CoRelAy/ViRelAy layout: ``attribution`` (N, ...), ``label`` (N,) or
    (N, classes), optional ``prediction`` (N, classes) and ``index`` (positions in the images file); the images
    file's ``data`` (M, C, H, W). Datasets stay on disk: they are read chunk by chunk."""
    import h5py

    file = h5py.File(relevance_file, "r")
    if "attribution" not in file or "label" not in file:
        raise ValueError(f"{relevance_file} lacks `attribution` or `label`; an HDF5 import reads the layout of "
                         "CoRelAy's and ViRelAy's attribution files (attribution, label, optional prediction, index)")
    arrays = {"relevance": file["attribution"], "labels": np.asarray(file["label"][:]),
              "output": file["prediction"] if "prediction" in file else None}
    if images_file is not None:
        data = h5py.File(images_file, "r")["data"]
        index = np.asarray(file["index"][:]) if "index" in file else None
        arrays["images"] = data if index is None else _Rows(data, index)
        arrays["ids"] = None if index is None else [str(i) for i in index]
    return arrays


class _Rows:
    """Rows of an on-disk array picked by an index, read slice by slice (h5py wants increasing indices)."""

    def __init__(self, array, index):
        self.array, self.index = array, np.asarray(index)
        self.shape = (len(self.index), *array.shape[1:])
        self.ndim, self.dtype = len(self.shape), array.dtype

    def __len__(self):
        return len(self.index)

    def __getitem__(self, rows):
        wanted = self.index[rows]
        order = np.argsort(wanted)
        picked = np.empty((len(wanted), *self.shape[1:]), dtype=self.dtype)
        picked[order] = self.array[wanted[order]]
        return picked


__all__ = ["from_arrays", "read_h5", "previews"]
