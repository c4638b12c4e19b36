"""Reading an explanation store (layout version 1, see docs/how-to/datasets.md) for the analyses.

Only what SpRAy, its report and the ViRelAy export need: open and check a store, find the explained samples of
each class, and read relevance chunk by chunk so that no analysis holds all full-size heatmaps at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

REQUIRED = ("relevance", "output", "label", "target", "done")


def open_store(path, mode: str = "r"):
    """The store's root group, checked by relprop.datasets (that it is a store of this layout version) and for the
    arrays the analyses read; a FileNotFoundError or ValueError naming the fix otherwise."""
    from ..datasets.store import Store, StoreError, read_attributes

    if read_attributes(path) is None:
        raise FileNotFoundError(f"{path} is not an explanation store (no zarr.json with relprop_store); write one "
                                "with `relprop run`")
    try:
        root = Store(path, mode).group
    except StoreError as error:
        raise ValueError(str(error)) from None
    missing = [name for name in REQUIRED if name not in root]
    if missing:
        raise ValueError(f"{path}: the store lacks {', '.join(missing)}; it was not written completely, run "
                         "`relprop run` again with the same arguments to finish it")
    return root


def explained(root) -> np.ndarray:
    """Bool (N,): samples whose chunk is done and that did not fail."""
    from ..datasets.store import done_mask

    done = done_mask(root, int(root.attrs["count"]), chunk_size(root))
    if "failed" in root:
        done &= ~np.asarray(_checked_whole(root, "failed"), dtype=bool)
    return done


def classes_of(root) -> np.ndarray:
    """(N,) the class each heatmap explains: the store's target, or the label where the target is not a class."""
    target = np.asarray(_checked_whole(root, "target"), dtype=np.int64)
    label = np.asarray(_checked_whole(root, "label"), dtype=np.int64)
    return np.where(target >= 0, target, label)


def _checked_whole(root, name: str) -> np.ndarray:
    """A whole small array, its done chunks checked against their checksums (ValueError naming a damaged one)."""
    from ..datasets.store import StoreError, checked_whole, done_mask

    try:
        return checked_whole(root, name, done_mask(root, int(root.attrs["count"]), chunk_size(root)))
    except StoreError as error:
        raise ValueError(str(error)) from None


def chunk_size(root) -> int:
    """Samples per chunk of the per-sample arrays (the store's `chunk`, else the relevance array's chunking)."""
    return int(root.attrs.get("chunk") or root["relevance"].chunks[0])


def read_chunks(array, indices: np.ndarray, chunk: int):
    """Yield (positions into indices, rows of array) for sorted store indices, one stored chunk at a time, each
    checked against its checksum (a ValueError names a damaged chunk instead of reading it as data)."""
    import zarr

    from ..datasets.store import StoreError, read_checked

    root = zarr.open_group(array.store, mode="r")
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        return
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    chunk_of = sorted_indices // chunk
    boundaries = np.flatnonzero(np.diff(chunk_of)) + 1
    for group in np.split(np.arange(len(sorted_indices)), boundaries):
        wanted = sorted_indices[group]
        start = int(chunk_of[group[0]]) * chunk
        try:
            block = np.asarray(read_checked(root, array.path, start, min(start + chunk, array.shape[0])))
        except StoreError as error:
            raise ValueError(str(error)) from None
        yield order[group], block[wanted - start]


def class_names(root) -> list[str] | None:
    names = root.attrs.get("class_names")
    return list(names) if names else None


__all__ = ["open_store", "explained", "classes_of", "chunk_size", "read_chunks", "class_names"]
