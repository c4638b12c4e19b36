"""Explain whole data sets into a resumable Zarr store, locally or on a Ray cluster.

``run(model, dataset, store=...)`` explains every sample and returns a Summary; ``open_store(path)`` reads a store
(arrays, attributes, done/failed, chunk by chunk). Sources (image folders, ``demo[:N]``, ``file.py:factory``) live
in :mod:`relprop.datasets.sources`; the store layout in :mod:`relprop.datasets.store`.

The names load on first use (PEP 562): reading a store (SpRAy, export) does not import torch, which the run's
modules need (about 500 MiB of memory on a CUDA build).
"""
from typing import TYPE_CHECKING

from ..lazy import attach

if TYPE_CHECKING:  # what the names below are, for readers, type checkers and the reference pages
    from .errors import StoreError
    from .imported import from_arrays
    from .pipeline import Summary, run
    from .sources import SOURCES, Sample, Source, open_source
    from .store import Store, open_store
    from .work import ModelSpec, RunError

# public name -> the module of this package that defines it
_NAMES = {"from_arrays": "imported", "Summary": "pipeline", "run": "pipeline", "SOURCES": "sources", "Sample": "sources",
          "Source": "sources", "open_source": "sources", "Store": "store", "StoreError": "errors",
          "open_store": "store", "ModelSpec": "work", "RunError": "work"}

__all__ = ["run", "Summary", "open_store", "Store", "StoreError", "RunError", "open_source", "Source", "Sample",
           "SOURCES", "ModelSpec", "from_arrays"]


__getattr__, __dir__ = attach(__name__, _NAMES)
