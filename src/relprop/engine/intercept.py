"""Interception: which tensors carry relevance, the one TorchFunctionMode base every mode shares (``OpMode``), and
where a warning should point; what an op is (its family, its arguments) is read by ``ops.signatures``.

The modes on ``OpMode``: ``Interceptor`` (hands each call to a session: LRP's ``session.Session``, DeepLift's
``deeplift_session.DeepLiftSession``), guided backprop's ReLU swap (``attribution.gradient``), recurrent layers as
time steps for plain gradients (``steps.StepsOnGPU``), incremental passes (``incremental``) and the memory tally
(``relprop.memory``). ``relprop.neuralize``'s two modes stay plain TorchFunctionModes: neuralize sits below ops (the
op family ``ops/clusters.py`` imports its modules), and they match two functions by identity, needing no names.
"""
from __future__ import annotations

import os
import sys

import torch
from torch.overrides import TorchFunctionMode

from ..ops.signatures import classify, writes_first_argument


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
    """The base of every mode that watches a model's torch calls: each call is named once (``classify``: its torch
    name and op family, cached per function) and goes to ``op(func, name, family, args, kwargs)``, kwargs always a
    dict. Quiet calls (shape and attribute reads, comparisons: ``ops.table.QUIET``) run as they are, unless the mode
    sets ``sees_quiet`` (the memory tally counts what ``new_zeros`` allocates; an incremental pass must stop a value
    read of a tensor it could not keep up to date)."""

    sees_quiet = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, family = classify(func)
        if family == "quiet" and not self.sees_quiet:
            return func(*args, **kwargs)
        return self.op(func, name, family, args, kwargs)

    def op(self, func, name: str, family: str | None, args, kwargs):
        raise NotImplementedError

    @staticmethod
    def in_place(func, name: str, args, kwargs) -> bool:
        """Whether the call writes into its first argument (``x.relu_()``, ``x += y``, ``F.relu(x, inplace=True)``):
        a mode that runs it otherwise must write its result there too, since the model may read x afterwards."""
        return writes_first_argument(func, name, args, kwargs)


class Interceptor(OpMode):
    """Hands every torch function call made while it is active to ``session.handle`` (LRP's session, DeepLift's)."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.op = session.handle  # OpMode's op is the session's dispatch itself: no call in between, per op


_INTERNAL = tuple(os.path.dirname(path) + os.sep for path in (os.path.dirname(__file__), torch.__file__))


def caller_level() -> int:
    """stacklevel for warnings.warn in the caller of this function that points at the first frame outside relprop
    and torch: the line of the model (or the user's call) that ran the op."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level
