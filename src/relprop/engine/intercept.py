"""Interception: which torch function an op is, which tensors carry relevance, and the TorchFunctionMode that routes
ops to a session. Shared by the LRP session and DeepLift's interceptor.
"""
from __future__ import annotations

import inspect
import os
import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode, resolve_name

from ..ops.table import FAMILIES, QUIET, is_inplace


class UnsupportedOperation(RuntimeError):
    """An op that touches relevance has no rule (raised in strict mode)."""


class UnsupportedOpWarning(UserWarning):
    """An op that touches relevance has no rule; its plain gradient is used."""


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


class DataFlow:
    """Marks the tensors computed from the input being explained, so that the ops touching them are found by data
    flow. The token is fresh per run: tensors left over from an earlier run do not count."""

    def __init__(self, attribute: str):
        self.attribute, self.token = attribute, object()

    def mark(self, out):
        if isinstance(out, torch.Tensor):
            if out.requires_grad:
                setattr(out, self.attribute, self.token)
        elif isinstance(out, (tuple, list)):
            for item in out:
                self.mark(item)

    def active(self, value) -> bool:
        return isinstance(value, torch.Tensor) and getattr(value, self.attribute, None) is self.token

    def touched(self, args, kwargs) -> list[torch.Tensor]:
        """The marked tensors among an op's arguments, also inside lists and tuples."""
        found = []
        for value in list(args) + list(kwargs.values()):
            for item in (value if isinstance(value, (list, tuple)) else (value,)):
                if self.active(item):
                    found.append(item)
        return found


class Interceptor(TorchFunctionMode):
    """Hands every torch function call made while it is active to ``session.handle``."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.session.handle(func, args, kwargs or {})


_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


def bind(names, args, kwargs, defaults=_DEFAULTS) -> dict:
    """An op's arguments by name (positional first), with defaults for those not given."""
    bound = dict(zip(names, args))
    bound.update(kwargs)
    for key in names:
        bound.setdefault(key, defaults.get(key))
    return bound


_SIGNATURES: dict = {}
_INTERNAL = tuple(os.path.dirname(path) + os.sep for path in (os.path.dirname(__file__), torch.__file__))


def caller_level() -> int:
    """stacklevel for warnings.warn in the caller of this function that points at the first frame outside relprop
    and torch: the line of the model (or the user's call) that ran the op."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def _signature(func):
    if func not in _SIGNATURES:
        try:
            _SIGNATURES[func] = inspect.signature(func)
        except (TypeError, ValueError):
            _SIGNATURES[func] = None
    return _SIGNATURES[func]


def writes_first_argument(func, name, args, kwargs) -> bool:
    if is_inplace(name):
        return True
    if not name.startswith("torch.nn.functional."):
        return False
    if kwargs.get("inplace") is True:
        return True
    signature = _signature(func)
    if signature is None or "inplace" not in signature.parameters:
        return False
    position = list(signature.parameters).index("inplace")
    return len(args) > position and args[position] is True


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
