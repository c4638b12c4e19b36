"""A small writer of explanation stores per the agreed layout (version 1), for the analysis tests.

The store's own writer (`relprop run`, relprop.datasets) lives on another branch; the integrator will switch these
tests to it. Until then this writes the same arrays and attributes directly through zarr.
"""
from __future__ import annotations

import datetime

import numpy as np
import torch
import zarr


def write_store(path, relevance, labels, output, chunk: int = 16, preview=None, extra=None, class_names=None,
                target=None, done=None, model="demo"):
    """Write relevance (N, ...) with labels, model outputs and optional previews / extra ground truth."""
    relevance = np.asarray(relevance, dtype=np.float32)
    count = len(relevance)
    labels = np.asarray(labels, dtype=np.int64)
    output = np.asarray(output, dtype=np.float32)
    root = zarr.open_group(str(path), mode="w")

    def per_sample(name, data):
        data = np.asarray(data)
        array = root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(chunk, *data.shape[1:]))
        array[:] = data

    per_sample("relevance", relevance)
    per_sample("output", output)
    per_sample("label", labels)
    per_sample("target", labels if target is None else np.asarray(target, dtype=np.int64))
    per_sample("explained", output[np.arange(count), np.clip(labels, 0, None)])
    per_sample("delta", np.zeros(count, np.float32))
    ids = root.create_array("id", shape=(count,), dtype=str, chunks=(chunk,))
    ids[:] = np.array([f"demo:{i}" for i in range(count)])
    if preview is not None:
        per_sample("preview", np.asarray(preview, dtype=np.uint8))
    per_sample("failed", np.zeros(count, bool))
    for name, data in (extra or {}).items():
        per_sample(f"extra/{name}", data)
    per_sample("done", np.ones(count, bool) if done is None else np.asarray(done, bool))
    root.attrs.update({
        "relprop_store": 1, "relprop_version": "test", "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), "model": model,
        "weights_sha256": None, "method": "lrp", "composite": "epsilon", "parameters": {}, "target": "label",
        "keep": "full", "data": "test", "count": count, "chunk": chunk, "input_shape": list(relevance.shape[1:]),
        "classes": int(output.shape[1]), "class_names": class_names, "skipped": [],
    })
    return path
