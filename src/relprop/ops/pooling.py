"""Pooling under a composite's rule: max-pooling always, average pooling where its window is no fixed convolution.

A pooling op's windows are Cartesian products of one index range per spatial dimension, so its window sum is x
multiplied along each spatial dimension by a 0/1 matrix A_d (outputs x inputs: padding, dilation and ceil mode only
change which entries are 1; adaptive pooling's ranges are floor(o L / O) to ceil((o + 1) L / O)). With R_j = y_j g_j
the relevance of output j (y the op's own output, the max or the mean):

  winner-take-all  the op's own gradient: the max takes all             rules.WinnerTakeAll, rules.Gradient
  proportional     R_i = sum_j A_ji x_i R_j / stabilize(sum_i A_ji x_i)  rules.SmoothMax, Zero, Epsilon, Norm
  flat             R_i = sum_j A_ji R_j / sum_i A_ji (in-bounds inputs)  rules.Flat

Both spread each window's relevance over its inputs only, so relevance is conserved (up to the stabilizer).
"""
from __future__ import annotations

import re

import torch

from .. import rules
from ..stabilize import divide_or_zero, stabilize
from .plain import selection_deeplift
from .signatures import bind
from .table import register

WINDOW_RULES = (rules.SmoothMax, rules.Zero, rules.Epsilon, rules.Norm, rules.Flat)  # rules that spread a window
MAX_POOL_RULES = (rules.Gradient, rules.WinnerTakeAll) + WINDOW_RULES
_POOL_ARGS = {"max": ("input", "kernel_size", "stride", "padding", "dilation"),
              "avg": ("input", "kernel_size", "stride", "padding")}


MAX_POOL_TAKES = ("rules.WinnerTakeAll (the max takes all; rules.Gradient is the same), rules.SmoothMax (in "
                  "proportion to the inputs; Zero, Epsilon and Norm are it with their stabilizer), rules.Flat (evenly "
                  "over the window)")
AVG_POOL_TAKES = ("rules.Gradient, rules.SmoothMax and every linear-layer rule (Epsilon, Norm, Flat, ZPlus, ...), "
                  "average pooling being a linear map")


def refuse(rule, what: str, where: str, takes: str):
    """A rule the composite maps to a pooling op that the op cannot use: an error naming the rules it takes."""
    raise TypeError(f"rule {rule!r} cannot be used on {what} '{where}'; {what} takes {takes}. Map one of these to "
                    "it, or leave it out of the composite")


def spatial_dims(name: str) -> int:
    return int(re.search(r"(\d)d", name.rsplit(".", 1)[-1]).group(1))


def window_matrix(length: int, outputs: int, kernel: int, stride: int, padding: int, dilation: int, like):
    """A_d for a fixed window: output o covers inputs o stride - padding + m dilation, m < kernel, in bounds."""
    positions = (torch.arange(outputs, device=like.device)[:, None] * stride - padding
                 + torch.arange(kernel, device=like.device) * dilation)
    rows = torch.arange(outputs, device=like.device)[:, None].expand_as(positions)
    inside = (positions >= 0) & (positions < length)
    matrix = torch.zeros(outputs, length, dtype=like.dtype, device=like.device)
    matrix[rows[inside], positions[inside]] = 1
    return matrix


def adaptive_matrix(length: int, outputs: int, like):
    """A_d for adaptive pooling: output o covers inputs floor(o L / O) .. ceil((o + 1) L / O) - 1."""
    o = torch.arange(outputs, device=like.device)[:, None]
    i = torch.arange(length, device=like.device)
    inside = (i >= (o * length) // outputs) & (i < -((-(o + 1) * length) // outputs))
    return inside.to(like.dtype)


def _tuple(value, dims):
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return None
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def window_matrices(name: str, x: torch.Tensor, y: torch.Tensor, args, kwargs) -> list[torch.Tensor]:
    """One A_d per spatial dimension of the pooling op ``name`` run on x, giving y."""
    dims = spatial_dims(name)
    lengths, outputs = x.shape[-dims:], y.shape[-dims:]
    if "adaptive" in name:
        return [adaptive_matrix(length, out, x) for length, out in zip(lengths, outputs)]
    kind = "max" if "max" in name.rsplit(".", 1)[-1] else "avg"
    bound = bind(_POOL_ARGS[kind], args, kwargs, {"stride": None, "padding": 0, "dilation": 1})
    kernel = _tuple(bound["kernel_size"], dims)
    stride = _tuple(bound["stride"], dims) or kernel
    padding, dilation = _tuple(bound["padding"], dims), _tuple(bound.get("dilation", 1), dims)
    return [window_matrix(*sizes, x) for sizes in zip(lengths, outputs, kernel, stride, padding, dilation)]


def along(tensor: torch.Tensor, matrices, transpose: bool = False) -> torch.Tensor:
    """tensor's window sums (A applied along each trailing spatial dimension), or A^T applied when transpose."""
    for position, matrix in enumerate(matrices):
        axis = tensor.dim() - len(matrices) + position
        moved = tensor.movedim(axis, -1)
        tensor = (moved @ matrix if transpose else moved @ matrix.T).movedim(-1, axis)
    return tensor


class WindowRule(torch.autograd.Function):
    """Forward: the pooling's own output y. Backward: y g spread over each window by the rule (see module doc)."""

    @staticmethod
    def forward(ctx, x, y, matrices, rule, direct):
        ctx.save_for_backward(x, y)
        ctx.matrices, ctx.rule, ctx.direct = matrices, rule, direct
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return spread(x, y * g, ctx.matrices, ctx.rule, ctx.direct), None, None, None, None


def spread(x, relevance, matrices, rule, direct: bool) -> torch.Tensor:
    """g at the input (or relevance itself, for the model input) from the outputs' relevance, under rule."""
    if isinstance(rule, rules.Flat):
        count = along(torch.ones_like(x), matrices)
        spread_relevance = along(relevance / count, matrices, transpose=True)
        return spread_relevance if direct else divide_or_zero(spread_relevance, x)
    total = along(x, matrices)
    if rule.stabilizer:
        share = relevance / stabilize(total, rule.stabilizer)
    else:
        share = divide_or_zero(relevance, total)
    g_in = along(share, matrices, transpose=True)
    return x * g_in if direct else g_in


def apply_window_rule(ctx, func, name, args, kwargs, rule):
    """The pooling op's output (and indices, if asked for), with rule's backward over its windows."""
    x = args[0]
    result = func(x.detach(), *args[1:], **kwargs)
    values = result[0] if isinstance(result, (tuple, list)) else result
    direct = isinstance(rule, rules.Flat) and ctx.is_model_input(x)
    row = ctx.row(name, rule.name)
    x_in = ctx.tap(ctx.direct_view(x) if direct else x, row, direct)
    out = WindowRule.apply(x_in, values, window_matrices(name, x, values, args, kwargs), rule, direct)
    ctx.watch(out, row)
    if isinstance(result, (tuple, list)):
        return (out, *result[1:])  # (values, indices)
    return out


def max_pool(ctx, func, name, args, kwargs):
    site = ctx.site("max_pool", name)
    rule = ctx.composite.rule_for(site)
    if rule is not None and not isinstance(rule, MAX_POOL_RULES):
        refuse(rule, "max-pooling", site.name or name, MAX_POOL_TAKES)
    if rule is None or isinstance(rule, (rules.Gradient, rules.WinnerTakeAll)):
        return ctx.plain(func, name, args, kwargs, rule=rule.name if rule else "Gradient")
    return apply_window_rule(ctx, func, name, args, kwargs, rule)


register("max_pool", deeplift=selection_deeplift)(max_pool)
