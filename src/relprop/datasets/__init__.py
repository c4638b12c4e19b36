"""Explain whole data sets into a resumable Zarr store, locally or on a Ray cluster.

``run(model, dataset, store=...)`` explains every sample and returns a Summary; ``open_store(path)`` reads a store
(arrays, attributes, done/failed, chunk by chunk). Sources (image folders, ``demo[:N]``, ``file.py:factory``) live
in :mod:`relprop.datasets.sources`; the store layout in :mod:`relprop.datasets.store`.
"""
from .imported import from_arrays
from .pipeline import Summary, run
from .sources import SOURCES, Sample, Source, open_source
from .store import Store, StoreError, open_store
from .work import ModelSpec, RunError

__all__ = ["run", "Summary", "open_store", "Store", "StoreError", "RunError", "open_source", "Source", "Sample",
           "SOURCES", "ModelSpec", "from_arrays"]
