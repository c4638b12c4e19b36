"""Ops whose gradient x input already is their relevance rule, so they take the plain gradient, in three families:

  gradient    linear and homogeneous maps (sums, means, shape and index ops, padding, interpolation): DeepLift takes
              their gradient too, which is exact for them
  rectifier   ReLU, LeakyReLU, abs: piecewise linear through zero, so the gradient is y / x. DeepLift: Rescale.
  selection   max, min, sort, top-k: the winner takes all. DeepLift: the path-averaged Jacobian (ops/reference.py);
              max-pooling (ops/pooling.py, its LRP) by the winner rule below.

DeepLift's winner rule for max-pooling: each window's output difference y - y0 goes to one input, the maximum of x
if y >= y0, else the maximum of x0, with multiplier (y - y0) / (x_i - x0_i), which lies in [0, 1]. So differences
add up exactly, and a window whose reference held the larger maximum still hands back its (negative) difference.
Windows that overlap (ResNet's 3x3 stride-2 pool) add their shares at an input they share.
"""
import torch

from . import elementwise, reference
from .table import register

_DROPOUTS = {"torch.nn.functional." + name for name in (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")}


def linear_deeplift(dl, func, name, args, kwargs, active):
    if (name in _DROPOUTS and reference.argument(args, kwargs, 2, "training", True)
            and reference.argument(args, kwargs, 1, "p", 0.5)):
        raise ValueError(f"{name} is active (training=True): inputs and baselines would be dropped differently. "
                         "Call model.eval() first (functional dropout: pass training=self.training)")
    return func(*args, **kwargs)


@register("gradient", deeplift=linear_deeplift)
def gradient(ctx, func, name, args, kwargs):
    return ctx.plain(func, name, args, kwargs)


register("rectifier", deeplift=elementwise.rescale)(gradient)


# ---- selections ----------------------------------------------------------------------------------------------------
class Winner(torch.autograd.Function):
    """Max-pooling under DeepLift: each window's y - y0 goes to the maximum of x or of x0, whichever pooled the larger
    value. Works at the pooled resolution from the pool's own argmax indices (flat per channel, as every max-pool
    gives them), and adds shares where overlapping windows pick the same input."""

    @staticmethod
    def forward(ctx, z, pool, pairing, eps):
        values, indices = pool(z)
        n = pairing.rows
        y, y0 = values[:n], pairing.reference(values)
        winner = indices[:n]
        winner0 = pairing.reference(indices).expand_as(winner)
        top = torch.maximum(y, y0)
        x0_at_winner = _gather(pairing.reference(z).expand_as(z[:n]), winner)  # x0 where x has its maximum
        x_at_winner0 = _gather(z[:n], winner0)  # x where x0 has its maximum
        to_input = _rescaled(top - y0, y - x0_at_winner, eps, flat=1.0)
        to_reference = _rescaled(y - top, x_at_winner0 - y0, eps, flat=0.0)
        ctx.pairing, ctx.shape = pairing, z.shape
        ctx.save_for_backward(winner, winner0, to_input, to_reference)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, g, _):
        winner, winner0, to_input, to_reference = ctx.saved_tensors
        n = ctx.pairing.rows
        g = g[:n]
        grad = g.new_zeros(ctx.shape)
        planes = grad[:n].flatten(2)
        planes.scatter_add_(2, winner.flatten(2), (g * to_input).flatten(2))
        planes.scatter_add_(2, winner0.flatten(2), (g * to_reference).flatten(2))
        return grad, None, None, None


def _gather(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor's values at a pool's argmax indices (flat over each channel's positions)."""
    return tensor.flatten(2).gather(2, indices.flatten(2)).reshape(indices.shape)


def _rescaled(difference_out, difference_in, eps, flat):
    """difference_out / difference_in, or ``flat`` where the inputs meet (|difference_in| < eps)."""
    meet = difference_in.abs() < eps
    return torch.where(meet, torch.full_like(difference_out, flat), difference_out / difference_in)


def selection_deeplift(dl, func, name, args, kwargs, active):
    short = name.rsplit(".", 1)[-1]
    if "max_pool" not in short:
        return reference.path_averaged(dl, func, name, args, kwargs, active)
    if not reference.one_activation(dl, args, active):
        return dl.fallback(func, name, args, kwargs, "its input is not one batch-first activation")
    z = args[0]
    if z.dim() < 3:
        return dl.fallback(func, name, args, kwargs, "its input has no channel dimension")
    names = ("input", "output_size") if "adaptive" in short else (
        "input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
    options = dict(zip(names[1:], args[1:]))
    options.update(kwargs)
    wants_indices = (bool(options.pop("return_indices", False)) or short.endswith("_with_indices")
                     or len(args) > len(names) and bool(args[-1]))
    pool = getattr(torch.nn.functional, short.replace("_with_indices", ""))
    values, indices = Winner.apply(z, lambda t: pool(t, **options, return_indices=True), dl.pairing, dl.eps)
    return (values, indices) if wants_indices else values


register("selection", deeplift=selection_deeplift)(gradient)
