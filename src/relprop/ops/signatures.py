"""What a torch function call is, read from its name and arguments: the op's family (``classify``), its arguments
by name (``bind``), and the out-of-place function an in-place op stands for (``plain_variant``, ``out_of_place``,
``writes_first_argument``). Op families and the engine both use these; they live with the ops so that ops import
nothing from the engine (the engine sits above ops, never the reverse).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.overrides import resolve_name

from .table import FAMILIES, QUIET, is_inplace

_CLASSIFIED: dict[Any, tuple[str, str | None]] = {}


def classify(func) -> tuple[str, str | None]:
    """(name, family) of a torch function; family None means no rule is known."""
    try:
        return _CLASSIFIED[func]
    except (KeyError, TypeError):
        pass
    name = resolve_name(func) or getattr(func, "__qualname__", None) or repr(func)
    family = "quiet" if name in QUIET else FAMILIES.get(name)
    if family is None and name.startswith("torch.Tensor.") and name.endswith(".__get__"):
        family = "quiet"
    try:
        _CLASSIFIED[func] = (name, family)
    except TypeError:
        pass
    return name, family


_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


def bind(names, args, kwargs, defaults=_DEFAULTS) -> dict:
    """An op's arguments by name (positional first), with defaults for those not given."""
    bound = dict(zip(names, args))
    bound.update(kwargs)
    for key in names:
        bound.setdefault(key, defaults.get(key))
    return bound


_SIGNATURES: dict = {}


def _signature(func):
    if func not in _SIGNATURES:
        try:
            _SIGNATURES[func] = inspect.signature(func)
        except (TypeError, ValueError):
            _SIGNATURES[func] = None
    return _SIGNATURES[func]


_INPLACE_POSITIONS: dict = {}


def _inplace_position(func) -> int | None:
    """Where a functional op takes ``inplace`` among its positional arguments (None: it takes none)."""
    try:
        return _INPLACE_POSITIONS[func]
    except KeyError:
        signature = _signature(func)
        position = None
        if signature is not None and "inplace" in signature.parameters:
            position = list(signature.parameters).index("inplace")
        _INPLACE_POSITIONS[func] = position
        return position


def writes_first_argument(func, name, args, kwargs) -> bool:
    """Whether this call changes its first argument in place (``x.mul_``, ``x *= y``, ``F.relu(x, inplace=True)``)."""
    if is_inplace(name):
        return True
    if not name.startswith("torch.nn.functional."):
        return False
    if kwargs.get("inplace") is True:
        return True
    position = _inplace_position(func)
    return position is not None and len(args) > position and args[position] is True


def plain_variant(name: str):
    """The torch function an in-place op of this name stands for (mul_ and __imul__: torch.mul), None if the op is
    not in place (or, for operators, has no torch function)."""
    short = name.rsplit(".", 1)[-1]
    if short.startswith("__"):
        return getattr(torch, short[3:-2], None) if short.startswith("__i") else None
    return getattr(torch, short[:-1]) if short.endswith("_") else None


def out_of_place(func, name, args, kwargs):
    """A one-argument function computing func(x, *rest) without modifying x."""
    short = name.rsplit(".", 1)[-1]
    rest = args[1:]
    if short.startswith("__") or name.startswith("torch.Tensor.") or (
            name.startswith("torch.") and not name.startswith("torch.nn.")):
        target = plain_variant(name) or func  # x ** p stays as it is, x **= p becomes torch.pow
        return lambda t: target(t, *rest, **kwargs)
    if short.endswith("_"):
        func = getattr(torch.nn.functional, short[:-1])
    signature = _signature(func)
    if signature is not None and "inplace" in signature.parameters:
        bound = signature.bind_partial(None, *rest, **kwargs)
        bound.arguments["inplace"] = False
        extra = {key: value for key, value in bound.arguments.items() if key != next(iter(signature.parameters))}
        return lambda t: func(t, **extra)
    return lambda t: func(t, *rest, **kwargs)
