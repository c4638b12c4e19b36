"""Element-wise activations (GELU, SiLU, tanh, sigmoid, ...): relevance passes through unchanged.

With relevance = tensor * g, passing R_out = y * g_out through means g_in = g_out * y / x. ReLU and LeakyReLU need
nothing: their gradient already equals y / x.
"""
import re

import torch


class PassThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        y = ctx.fn(x)
        # Where x is (numerically) zero no relevance can be carried back: y/x would overflow.
        tiny = x.abs() <= torch.finfo(x.dtype).tiny * 1e6
        ratio = torch.where(tiny, torch.zeros_like(y), y / torch.where(tiny, torch.ones_like(x), x))
        return g * ratio, None


def pass_through(x: torch.Tensor, fn) -> torch.Tensor:
    return PassThrough.apply(x, fn)


class PassModule(torch.autograd.Function):
    """A whole element-wise module (an RMSNorm, a GELU written with pow and tanh) as one pass-through op: forward
    returns the module's own output y, backward hands g * y / x to its input."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        tiny = x.abs() <= torch.finfo(x.dtype).tiny * 1e6
        ratio = torch.where(tiny, torch.zeros_like(y), y / torch.where(tiny, torch.ones_like(x), x))
        return g * ratio, None


def pass_module(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return PassModule.apply(x, y.detach())


ELEMENTWISE_MODULE = re.compile(r".*RMSNorm|.*(GELU|SiLU|Swish|Mish)\w*Activation|.*GELUTanh|QuickGELU")


def is_elementwise_module(module, extra_types=()) -> bool:
    """Modules computed element-wise from pieces without rules of their own (pow, rsqrt, tanh of a polynomial)."""
    if extra_types and isinstance(module, tuple(extra_types)):
        return True
    return ELEMENTWISE_MODULE.fullmatch(type(module).__name__) is not None
