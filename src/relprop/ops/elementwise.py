"""Element-wise activations (GELU, SiLU, tanh, sigmoid, ...): relevance passes through unchanged.

With relevance = tensor * g, passing R_out = y * g_out through means g_in = g_out * y / x. ReLU and LeakyReLU need
nothing: their gradient already equals y / x.
"""
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
