"""Linear-like ops (linear, convolution, transposed convolution, pooling as a linear map) under any LinearRule.

The backward pass carries g with relevance = tensor * g (the gradient x input convention). For a layer z = f(x, W)
+ b that receives g at its output, the relevance to explain is R = z * g. The rule's denominators are computed
lazily in the backward pass, from the saved input, and only for groups that explain some non-zero relevance
(after a ReLU the negative outputs carry none, so the gamma rule's negative group costs nothing there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..rules import PROPORTIONAL_INPUTS, LinearRule, keep
from ..stabilize import divide_or_zero


@dataclass
class LinearMap:
    """How to run a linear-like op with given weights, and how to apply its transpose to a tensor."""

    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    transpose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (v, weight, input) -> W^T v
    out_channel_dim: int = 0  # which weight dim indexes output channels (for batch-norm merging)
    groups: int = 1
    transposed: bool = False


def dense_map() -> LinearMap:
    return LinearMap(forward=F.linear, transpose=lambda v, weight, x: v @ weight)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _tuple(value, dims):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def conv_map(dims: int, transposed: bool, stride=1, padding=0, dilation=1, groups=1, output_padding=0) -> LinearMap:
    stride, dilation = _tuple(stride, dims), _tuple(dilation, dims)
    fn = (_CONV_T if transposed else _CONV)[dims]
    if transposed:
        kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    else:
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def forward(x, weight, bias):
        return fn(x, weight, bias, **kwargs)

    if isinstance(padding, str):
        # 'same'/'valid' padding: the transpose goes through autograd on one more forward (rare in practice).
        def transpose(v, weight, x):
            with torch.enable_grad():
                probe = x.detach().requires_grad_(True)
                return torch.autograd.grad(fn(probe, weight, None, **kwargs), probe, v, create_graph=v.requires_grad)[0]
    else:
        padding_, output_padding_ = _tuple(padding, dims), _tuple(output_padding, dims)

        def transpose(v, weight, x):
            return torch.ops.aten.convolution_backward(
                v, x, weight, None, stride, padding_, dilation, transposed, output_padding_, groups,
                [True, False, False],
            )[0]

    return LinearMap(forward, transpose, out_channel_dim=1 if transposed else 0, groups=groups, transposed=transposed)


def scale_output_channels(weight: torch.Tensor, scale: torch.Tensor, linear_map: LinearMap) -> torch.Tensor:
    """weight with each output channel multiplied by scale (what merging a following batch norm does)."""
    if not linear_map.transposed:
        return weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
    groups = linear_map.groups
    in_channels, out_per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape((groups, in_channels // groups, out_per_group) + tuple(weight.shape[2:]))
    factor = scale.reshape((groups, 1, out_per_group) + (1,) * (weight.dim() - 2))
    return (grouped * factor).reshape(weight.shape)


@dataclass
class LinearCall:
    """What one linear-like op call needs for its backward; kept on its output so a batch norm can merge into it."""

    linear_map: LinearMap
    rule: LinearRule
    site: Any
    session: Any
    direct: bool = False  # the input is the model input: hand back relevance itself, not g
    output: torch.Tensor | None = None  # precomputed output (merged batch norm), handed over once


def _select_input(kind: str, x: torch.Tensor, call: LinearCall) -> torch.Tensor:
    if kind == "x":
        return x
    if kind == "x+":
        return x.clamp(min=0)
    if kind == "x-":
        return x.clamp(max=0)
    if kind == "ones":
        return torch.ones_like(x)
    if kind in ("low", "high"):
        bound = call.rule.low if kind == "low" else call.rule.high
        return torch.broadcast_to(torch.as_tensor(bound, dtype=x.dtype, device=x.device), x.shape)
    if kind == "pow":
        return x.pow(call.rule.p)
    raise ValueError(kind)


def _is_plain(terms, rule, bias) -> bool:
    if len(terms) != 1:
        return False
    term = terms[0]
    return term.input == "x" and term.weight is keep and term.sign == 1 and (
        bias is None or (term.bias and not rule.zero_bias))


def _denominator(terms, rule, lmap, x, weight, bias, call):
    denominator = 0
    for term in terms:
        term_bias = None if (bias is None or not term.bias or rule.zero_bias) else term.weight(bias)
        denominator = denominator + term.sign * lmap.forward(_select_input(term.input, x, call), term.weight(weight), term_bias)
    return denominator


def input_relevance(call: LinearCall, x, weight, bias, z, g, differentiable: bool):
    """The rule's backward: g (or relevance, for direct inputs) at the input, from g at the output."""
    rule = call.rule
    lmap = call.linear_map
    relevance_out = z * g
    has_negative = differentiable or bool((x < 0).any())
    has_positive = differentiable or bool((x > 0).any())
    # Accumulated W^T s per kind of input; combined into g (proportional) or relevance (the others) at the end.
    transposed: dict[str, torch.Tensor] = {}
    for group in rule.groups():
        terms = [t for t in group.terms if not (t.input == "x-" and not has_negative)
                 and not (t.input == "x+" and not has_positive)]
        if not terms:
            continue
        numerator = relevance_out
        if group.where is not None:
            mask = z > 0 if group.where == "positive" else z < 0
            numerator = numerator * mask
        if not differentiable and not bool(numerator.any()):
            continue
        if _is_plain(terms, rule, bias):
            denominator = z  # the epsilon family: the denominator is the output itself, no recomputation
        else:
            denominator = _denominator(terms, rule, lmap, x, weight, bias, call)
        s = group.coefficient * numerator / rule.stabilize(denominator)
        by_input: dict[str, torch.Tensor] = {}
        for term in terms:
            term_weight = term.sign * term.weight(weight)
            by_input[term.input] = by_input[term.input] + term_weight if term.input in by_input else term_weight
        for kind, combined in by_input.items():
            part = lmap.transpose(s, combined, x)
            transposed[kind] = transposed[kind] + part if kind in transposed else part

    g_in = torch.zeros_like(x)
    for kind in PROPORTIONAL_INPUTS:
        if kind not in transposed:
            continue
        part = transposed[kind]
        if kind == "x+":
            part = part * (x > 0)
        elif kind == "x-":
            part = part * (x < 0)
        g_in = g_in + part
    direct = None
    for kind, part in transposed.items():
        if kind in PROPORTIONAL_INPUTS:
            continue
        contribution = _select_input(kind, x, call) * part
        direct = contribution if direct is None else direct + contribution
    if call.direct:
        return x * g_in if direct is None else x * g_in + direct
    if direct is not None:
        # Relevance that is not proportional to the input can only travel on where the input is non-zero.
        g_in = g_in + divide_or_zero(direct, x)
    return g_in


class RuleGradient(torch.autograd.Function):
    """Differentiable mode: adds zero to the output, and its backward is the rule's (recomputed, differentiable).

    The output value then comes from the op on the *detached* input, so that its dependence on the parameters is
    the true one (what a second derivative with respect to the parameters needs), while the input sees the rule.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, call: LinearCall, like):
        ctx.call = call
        ctx.save_for_backward(x, weight, bias)
        return torch.zeros_like(like)

    @staticmethod
    def backward(ctx, g):
        x, weight, bias = ctx.saved_tensors
        z = ctx.call.linear_map.forward(x, weight, bias)
        return input_relevance(ctx.call, x, weight, bias, z, g, True), None, None, None, None


def apply_rule(x, weight, bias, call: LinearCall, differentiable: bool):
    """The op's output, whose backward applies call.rule to the input."""
    if not differentiable:
        return LinearRuleFunction.apply(x, weight, bias, call)
    value = call.linear_map.forward(x.detach(), weight, bias)
    call.output = None
    return value + RuleGradient.apply(x, weight, bias, call, value.detach())


class LinearRuleFunction(torch.autograd.Function):
    """Forward: the op itself (or a precomputed output, for merged batch norm). Backward: the rule."""

    @staticmethod
    def forward(ctx, x, weight, bias, call: LinearCall):
        z = call.linear_map.forward(x, weight, bias) if call.output is None else call.output
        call.output = None
        ctx.call = call
        # z is kept as a copy: the model may change the output in place (ReLU(inplace=True), out += identity).
        ctx.save_for_backward(x, weight, bias, z.clone())
        return z

    @staticmethod
    def backward(ctx, g):
        x, weight, bias, z = ctx.saved_tensors
        call = ctx.call
        g_in = input_relevance(call, x, weight, bias, z, g, False)
        call.session.on_rule_backward(call, x, z, g, g_in)
        return g_in, None, None, None
