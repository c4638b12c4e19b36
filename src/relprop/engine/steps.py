"""Plain gradients through recurrent layers: ``StepsOnGPU`` runs ``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``,
``torch.rnn_relu`` and their cells as their time steps (``ops.recurrent.run``, whose docstring states the
equations), every other op as it is.

cuDNN's fused recurrent kernel has a backward that refuses models in eval mode ("cudnn RNN backward can only be
called in training mode"), so a gradient method (gradient, integrated gradients, SmoothGrad, ...) would fail on a GPU
where the steps' plain ops do not; the steps compute the same function, so their gradient is the fused op's
(to float rounding). LRP and DeepLift run the same steps through their own handlers.
"""
from __future__ import annotations

import contextlib

import torch

from ..ops.recurrent import bind_call, run
from .intercept import OpMode


class StepsOnGPU(OpMode):
    """Recurrent ops on a GPU (or anywhere, with ``everywhere``) run as their time steps, other ops as they are.

    Args:
        everywhere: Run the steps on every device, not only where cuDNN would take the op.
    """

    def __init__(self, everywhere: bool = False):
        super().__init__()
        self.everywhere = everywhere

    def op(self, func, name, family, args, kwargs):
        if family == "recurrent" and (self.everywhere or args[0].is_cuda):
            return run(bind_call(name, args, kwargs))
        return func(*args, **kwargs)


def gradients_through(model: torch.nn.Module):
    """The context a gradient method runs model in: StepsOnGPU where it has recurrent layers, else none.

    Args:
        model: The model about to run.

    Returns:
        A context manager.
    """
    if any(isinstance(module, torch.nn.RNNBase) for module in model.modules()):
        return StepsOnGPU()
    return contextlib.nullcontext()
