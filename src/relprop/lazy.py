"""Names of a package loaded on first use (PEP 562), so importing the package costs nothing until a name is read:
``import relprop`` and reading a store do not import torch (about 500 MiB on a CUDA build)."""
from __future__ import annotations

import importlib
import sys


def attach(package: str, names: dict[str, str], listed: tuple[str, ...] = ()):
    """The ``__getattr__`` and ``__dir__`` of a package whose public names load on first use.

    Args:
        package: The package's ``__name__``.
        names: Public name -> the submodule (relative to the package) that defines it.
        listed: Submodules ``dir()`` shows beside the names (any submodule loads when read as an attribute).

    Returns:
        The pair (__getattr__, __dir__) to assign in the package's ``__init__``.
    """

    def __getattr__(name):
        if name in names:
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
            vars(sys.modules[package])[name] = value  # found directly from now on
            return value
        if name.startswith("__"):  # dunder lookups (copy, pickle, inspect) are never submodules
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:  # a submodule read as an attribute (relprop.datasets.store after import relprop) is imported then
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as error:
            if error.name != f"{package}.{name}":
                raise  # the submodule exists but needs something that is missing: say that
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__():
        return sorted({*vars(sys.modules[package]), *names, *listed})

    return __getattr__, __dir__
