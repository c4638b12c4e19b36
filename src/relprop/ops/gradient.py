"""Ops whose gradient x input already is their relevance rule: linear and homogeneous maps (sums, means, shape and
index ops, padding, interpolation, average pooling without a rule), ReLU and LeakyReLU (piecewise linear through
zero: the gradient is y / x), and selections (max-pooling, max, sort: winner takes all).
"""
from .table import register


@register("gradient", deeplift="linear")
def gradient(ctx, func, name, args, kwargs):
    return ctx.plain(func, name, args, kwargs)
