"""Export a store and its SpRAy analyses as a ViRelAy project (the viewer of CoRelAy's results).

The layout follows what ViRelAy's loader reads (``virelay/model.py``, the same in 0.6.1 and 1.0.0), which differs
from its own database specification (docs, "Database Specification") in four places:

- clusterings sit in a group ``cluster`` (the specification says ``clustering``), each one dataset of labels (the
  specification: a group with ``root``, ``base``, ``name``);
- each embedding is a dataset ``embedding/<name>`` (specification: a group with ``root``), and the eigenvalues are
  an attribute ``eigenvalue`` of that dataset (specification: a dataset beside ``root``);
- labels must be integers (the specification allows float32 for attributions): the loader looks them up by index;
- attributions and inputs must be 3-D (channels, height, width): the loader moves the smallest axis last.

Files written into the project folder:

- ``input.h5``: ``data`` float32 (N, C, P, P) in [0, 1] (the store's ``preview``, the inputs as shown), ``label``
  int64 (N,) (-1 becomes 0: the loader needs a class; unknown labels are listed in the YAML's comment).
- ``attribution.h5``: ``attribution`` float32 (n, C, P, P) (relevance average-pooled to the preview's size when it
  is larger), ``prediction`` float32 (n, classes), ``label`` int64 (n,), ``index`` int64 (n,) positions in input.h5;
  only explained samples.
- ``analysis.h5``: per analysed set (``class-<k>``/``all``) a group with ``index`` (positions in input.h5),
  ``cluster/<name>`` and ``embedding/<name>`` (``spectral`` holds all m eigenvectors, eigenvalues attached),
  ``name`` (the set's readable name).
- ``label-map.json``: ``[{"index", "word_net_id", "name"}]``; word_net_id is ``class-<k>``, so ViRelAy names the
  per-class analyses by their class.
- ``project.yaml``: name, model, label map, dataset (hdf5), attributions, analyses (method ``spray``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..datasets import store as stores
from . import spray


def _pooled(block: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch

    values = torch.from_numpy(np.asarray(block, dtype=np.float32))
    if values.ndim == 3:  # keep=channels: one channel
        values = values[:, None]
    if tuple(values.shape[2:]) != size:
        values = torch.nn.functional.adaptive_avg_pool2d(values, size)
    return values.numpy()


def class_names(known: list[str] | None, classes: int) -> list[str]:
    """A name for each of the model's classes: the store's, then ``class-<k>`` for those it has none for (a folder
    of two class sub-folders explained by a model with more outputs).

    Args:
        known: The store's class names, or None.
        classes: The model's number of classes.

    Returns:
        A list of names.
    """
    known = list(known or [])[:classes]
    return known + [f"class-{k}" for k in range(len(known), classes)]


def _quoted(text: str) -> str:
    return json.dumps(str(text))  # a JSON string is a valid double-quoted YAML scalar


def export(store, out) -> Path:
    """Write the ViRelAy project for ``store`` into the folder ``out``; returns the path of project.yaml.

    Args:
        store: The store's path.
        out: The project's folder.

    Returns:
        The path of project.yaml.

    Raises:
        ValueError: for a store without previews (not image data) or without SpRAy analyses.
    """
    import h5py

    out = Path(out)
    root = stores.open_store(store).group
    if "preview" not in root:
        raise ValueError(f"{store} has no `preview` array (not image data); ViRelAy shows images only")
    analyses = spray.stored(store)
    if not analyses:  # ViRelAy opens a project without analyses as an empty page: refuse before writing anything
        raise ValueError(f"{store} holds no SpRAy analysis for ViRelAy to show; run `relprop spray {store}` first")
    out.mkdir(parents=True, exist_ok=True)
    previews, relevance = root["preview"], root["relevance"]
    count, chunk = previews.shape[0], stores.chunk_size(root)
    size = tuple(previews.shape[2:])
    labels = np.asarray(root["label"][:], dtype=np.int64)
    classes = int(root.attrs.get("classes") or root["output"].shape[1])
    names = class_names(stores.class_names(root), classes)
    ready = np.flatnonzero(stores.ready(root))

    with h5py.File(out / "input.h5", "w") as file:
        data = file.create_dataset("data", shape=(count, *previews.shape[1:]), dtype="float32",
                                   chunks=(min(chunk, count), *previews.shape[1:]))
        for start in range(0, count, chunk):
            data[start:start + chunk] = np.asarray(previews[start:start + chunk], dtype=np.float32) / 255
        file.create_dataset("label", data=np.clip(labels, 0, None))
    channels = 1 if relevance.ndim == 3 else relevance.shape[1]
    with h5py.File(out / "attribution.h5", "w") as file:
        attribution = file.create_dataset("attribution", shape=(len(ready), channels, *size), dtype="float32",
                                          chunks=(max(1, min(chunk, len(ready))), channels, *size))
        for positions, block in stores.read_chunks(relevance, ready, chunk):
            attribution[positions[0]:positions[-1] + 1] = _pooled(block, size)  # ready is sorted: positions are a run
        file.create_dataset("prediction", data=np.asarray(root["output"][:], dtype=np.float32)[ready])
        file.create_dataset("label", data=np.clip(labels[ready], 0, None))
        file.create_dataset("index", data=ready.astype(np.int64))
    with h5py.File(out / "analysis.h5", "w") as file:
        for name in analyses:
            result = spray.read(store, name)
            group = file.create_group(name)
            readable = names[int(name.split("-")[1])] if name.startswith("class-") else "all samples"
            group.create_dataset("name", data=readable)
            group.create_dataset("index", data=result.index.astype(np.int64))
            for clustering, values in result.clusters.items():
                group.create_dataset(f"cluster/{clustering}", data=values.astype(np.int64))
            spectral = group.create_dataset("embedding/spectral", data=result.eigenvectors.astype(np.float32))
            spectral.attrs["eigenvalue"] = result.eigenvalues.astype(np.float32)
            for embedding, points in result.embeddings.items():
                if embedding != "spectral":  # the 2-D spectral picture is eigenvectors 2 and 3 of the one above
                    group.create_dataset(f"embedding/{embedding}", data=points.astype(np.float32))
    label_map = [{"index": k, "word_net_id": f"class-{k}", "name": names[k]} for k in range(classes)]
    (out / "label-map.json").write_text(json.dumps(label_map, indent=2) + "\n")

    unknown = int((labels < 0).sum())
    lines = [
        "# A ViRelAy project written by `relprop export virelay` from " + str(Path(store).resolve()),
        f"# {unknown} samples without a label are shown as class 0" if unknown else "# every sample has its label",
        "project:",
        f"  name: {_quoted(Path(store).stem)}",
        f"  model: {_quoted(root.attrs.get('model', 'unknown'))}",
        "  label_map: label-map.json",
        "  dataset:",
        f"    name: {_quoted(root.attrs.get('data', Path(store).stem))}",
        "    type: hdf5",
        "    path: input.h5",
        "  attributions:",
        f"    attribution_method: {_quoted(root.attrs.get('composite') or root.attrs.get('method', 'lrp'))}",
        "    attribution_strategy: " + ("predicted_label" if root.attrs.get("target") == "predicted" else "true_label"),
        "    sources:",
        "      - attribution.h5",
    ]
    if analyses:
        lines += ["  analyses:", "    - analysis_method: spray", "      sources:", "        - analysis.h5"]
    (out / "project.yaml").write_text("\n".join(lines) + "\n")
    return out / "project.yaml"


__all__ = ["export", "class_names"]
