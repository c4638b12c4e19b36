"""Element-wise activations (GELU, SiLU, tanh, sigmoid, ...): relevance passes through unchanged.

With relevance = tensor * g, passing R_out = y * g_out through means g_in = g_out * y / x. ReLU and LeakyReLU need
nothing: their gradient already equals y / x.
"""
import re

import torch


def _ratio_times(g: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g * y / x, and 0 where x is zero (or so small that y / x overflows): there no relevance can travel back."""
    out = (g * y).div_(x)
    return out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


class PassThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # differentiable mode: plain ops only
            y = ctx.fn(x)
            safe = torch.where(x == 0, torch.ones_like(x), x)
            return torch.where(x == 0, torch.zeros_like(g), g * y / safe), None
        return _ratio_times(g, ctx.fn(x), x), None


def pass_through(x: torch.Tensor, fn) -> torch.Tensor:
    return PassThrough.apply(x, fn)


class PassModule(torch.autograd.Function):
    """A whole element-wise module (an RMSNorm, a GELU written with pow and tanh) as one pass-through op: forward
    returns the module's own output y, backward hands g * y / x to its input."""

    @staticmethod
    def forward(ctx, x, holder):
        (y,) = holder  # handed over outside the inputs, so that it can be returned without a copy
        ratio = (y / x).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        ctx.save_for_backward(ratio)
        return y

    @staticmethod
    def backward(ctx, g):
        (ratio,) = ctx.saved_tensors
        return g * ratio, None


def pass_module(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return PassModule.apply(x, [y.detach()])


ELEMENTWISE_MODULE = re.compile(r".*RMSNorm|.*(GELU|SiLU|Swish|Mish)\w*Activation|.*GELUTanh|QuickGELU")


def is_elementwise_module(module, extra_types=()) -> bool:
    """Modules computed element-wise from pieces without rules of their own (pow, rsqrt, tanh of a polynomial)."""
    if extra_types and isinstance(module, tuple(extra_types)):
        return True
    return ELEMENTWISE_MODULE.fullmatch(type(module).__name__) is not None
