"""Interception: which tensors carry relevance, the TorchFunctionMode base that routes ops (``OpMode``: the LRP
session's ``Interceptor``, DeepLift's, guided backprop's), and where a warning should point; what an op is (its
family, its arguments) is read by ``ops.signatures``.
"""
from __future__ import annotations

import os
import sys

import torch
from torch.overrides import TorchFunctionMode

from ..ops.signatures import classify


class UnsupportedOperation(RuntimeError):
    """An op that touches relevance has no rule (raised in strict mode)."""


class UnsupportedOpWarning(UserWarning):
    """An op that touches relevance has no rule; its plain gradient is used."""


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


class OpMode(TorchFunctionMode):
    """The base of the modes that route a model's torch calls (LRP's session, DeepLift, guided backprop's ReLU swap):
    each call is named once (``classify``), quiet ones (shape and attribute reads) run as they are, and every other
    goes to ``op(func, name, family, args, kwargs)``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, family = classify(func)
        if family == "quiet":
            return func(*args, **kwargs)
        return self.op(func, name, family, args, kwargs)

    def op(self, func, name: str, family: str | None, args, kwargs):
        raise NotImplementedError


class Interceptor(OpMode):
    """Hands every torch function call made while it is active to ``session.handle``."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def op(self, func, name, family, args, kwargs):
        return self.session.handle(func, name, family, args, kwargs)


_INTERNAL = tuple(os.path.dirname(path) + os.sep for path in (os.path.dirname(__file__), torch.__file__))


def caller_level() -> int:
    """stacklevel for warnings.warn in the caller of this function that points at the first frame outside relprop
    and torch: the line of the model (or the user's call) that ran the op."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level
