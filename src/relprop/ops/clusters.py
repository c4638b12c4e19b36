"""LRP for relprop.neuralize's modules, ruled as whole modules by the composite (ops.table.MODULES).

With R = y g the relevance of an output y:
  min-pooling (MinPool, LogMeanExpPool), site kind "min_pool":
    rules.WinnerTakeAll / Gradient on MinPool: the min takes all (its gradient; the module runs as usual)
    rules.SoftMin(beta):          R_k = exp(-beta s_k) / sum_k' exp(-beta s_k') R   (Kauffmann et al. 2022)
    Gradient on LogMeanExpPool:    R_k = softmax(beta s)_k R, its own gradient as the weights (the default)
    rules.WinnerTakeAll on LogMeanExpPool: R to argmin s (beta < 0) or argmax s (beta > 0)
  discriminants (Discriminants), site kind "discriminant":
    rules.Midpoint:  R_i = sum_ck (x - m_ck)_i w_ck,i R_ck / h_ck, m_ck = (mu_c + mu_k) / 2; since
                     w_ck . (x - m_ck) = h_ck this conserves exactly
    none or Gradient: the module runs as usual, its F.linear under the composite's "linear" (or default) rule
Relevance reaches the input as g = R / x (relevance = tensor * g); where x = 0 it cannot travel further (delta says
how much), except at the model input, which takes relevance as it is.
"""
from __future__ import annotations

import torch

from .. import rules
from ..neuralize import Discriminants, LogMeanExpPool, MinPool
from ..stabilize import divide_or_zero
from .pooling import refuse
from .table import register_module

MIN_POOL_TAKES = ("rules.WinnerTakeAll (the min takes all; rules.Gradient is the module's own gradient), "
                  "rules.SoftMin(beta) (the paper's soft-min over competitors)")
DISCRIMINANT_TAKES = ("rules.Midpoint (the paper's) or rules.Gradient (its linear layer then runs under the "
                      "composite's 'linear' or default rule, which is where a linear-layer rule such as Epsilon goes)")


class RuledOutput(torch.autograd.Function):
    """Forward: the module's own output y (a copy). Backward (each subclass): its rule, from the saved tensors."""

    @staticmethod
    def forward(ctx, x, y, direct, *tensors):
        ctx.save_for_backward(x, y, *tensors)
        ctx.direct = direct
        return y.clone()


class Redistribute(RuledOutput):
    """R = y g shared over the pooled (last) dimension by the given weights."""

    @staticmethod
    def backward(ctx, g):
        s, y, weights = ctx.saved_tensors
        relevance = weights * (y * g).unsqueeze(-1)
        return (relevance if ctx.direct else divide_or_zero(relevance, s)), None, None, None


class MidpointRule(RuledOutput):
    """The midpoint rule, R_i = sum_p (x_i - m_pi) w_pi g_p with R_p = h_p g_p (p: the pairs (c, k))."""

    @staticmethod
    def backward(ctx, g):
        x, _, weight, midpoints = ctx.saved_tensors
        g = g.flatten(-2)  # (..., K, K - 1) -> one column per pair (c, k)
        proportional, fixed = g @ weight, g @ (midpoints * weight)  # x_i sum_p w_pi g_p and sum_p m_pi w_pi g_p
        grad = x * proportional - fixed if ctx.direct else proportional - divide_or_zero(fixed, x)
        return grad, None, None, None, None


def _name(module) -> str:
    return f"{type(module).__name__} (neuralized k-means)"


def _finish(ctx, function, x, row, *args):
    """finish(output): the module's output through function, which carries the rule, on the report."""
    direct = ctx.is_model_input(x)
    x_in = ctx.tap(ctx.direct_view(x) if direct else x, row, direct)

    def finish(output):
        out = function.apply(x_in, output, direct, *args)
        ctx.mark(out)
        ctx.watch(out, row)
        return out

    return finish


@register_module(MinPool, LogMeanExpPool)
def min_pool(ctx, module, s):
    site = ctx.site("min_pool", _name(module))
    rule = ctx.composite.rule_for(site)
    if rule is not None and not isinstance(rule, (rules.Gradient, rules.WinnerTakeAll, rules.SoftMin)):
        refuse(rule, "min-pooling", site.name or _name(module), MIN_POOL_TAKES)
    smooth = isinstance(module, LogMeanExpPool)
    if not smooth and not isinstance(rule, rules.SoftMin):
        return None  # the exact min: its gradient is winner-take-all
    values = s.detach()
    if isinstance(rule, rules.SoftMin):
        weights = torch.softmax(-rule.beta * values, -1)
    elif isinstance(rule, rules.WinnerTakeAll):
        winner = (values if module.beta > 0 else -values).argmax(-1, keepdim=True)
        weights = torch.zeros_like(values).scatter_(-1, winner, 1.0)
    else:
        weights = torch.softmax(module.beta * values, -1)  # LogMeanExpPool's own gradient
    label = rule.name if rule is not None else "Gradient (soft-min weights)"
    return _finish(ctx, Redistribute, s, ctx.row(_name(module), label), weights)


@register_module(Discriminants)
def discriminants(ctx, module, x):
    site = ctx.site("discriminant", _name(module))
    rule = ctx.composite.rule_for(site)
    if rule is None or isinstance(rule, rules.Gradient):
        return None  # its linear layer runs under the composite's rule for linear layers
    if not isinstance(rule, rules.Midpoint):
        refuse(rule, "cluster discriminants", site.name or _name(module), DISCRIMINANT_TAKES)
    return _finish(ctx, MidpointRule, x, ctx.row(_name(module), rule.name), module.weight, module.midpoints)
