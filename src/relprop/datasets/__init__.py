"""Explain whole data sets into a resumable Zarr store, locally or on a Ray cluster.

``run(model, dataset, store=...)`` explains every sample and returns a Summary; ``open_store(path)`` reads a store
(arrays, attributes, done/failed, chunk by chunk). Sources (image folders, ``demo[:N]``, ``file.py:factory``) live
in :mod:`relprop.datasets.sources`; the store layout in :mod:`relprop.datasets.store`.

The names load on first use (PEP 562): reading a store (SpRAy, export) does not import torch, which the run's
modules need (about 500 MiB of memory on a CUDA build).
"""
import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    return _submodule(name)


def _submodule(name):
    """A submodule read as an attribute (``relprop.datasets.store`` after ``import relprop``) is imported then."""
    if name.startswith("__"):  # dunder lookups (copy, pickle, inspect) are never submodules
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise  # the submodule exists but needs something that is missing: say that
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted({*globals(), *_NAMES})
