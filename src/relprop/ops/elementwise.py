"""Element-wise activations (GELU, SiLU, tanh, sigmoid, ...): relevance passes through unchanged.

With relevance = tensor * g, passing R_out = y * g_out through means g_in = g_out * y / x. ReLU and LeakyReLU need
nothing: their gradient already equals y / x (ops/plain.py). Other element-wise maths (exp, log, sqrt, pow, ...)
form the ``pointwise`` family, which has no LRP rule (it is reported as unsupported).

DeepLift's Rescale rule, for every element-wise op y = f(x) (activations, rectifiers, pointwise maths): the
multiplier is (f(x) - f(x0)) / (x - x0), and the gradient f'(x) where |x - x0| < eps.
"""
import functools
import re

import torch

from . import reference
from .kept import KeptOutput
from .signatures import out_of_place
from .table import register


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
    returns the module's own output y, backward hands g * y / x to its input.

    It keeps what a plain gradient would keep: x and an alias of y, which the next op usually saves anyway. A norm's
    ratio y / x is a per-row scale times a per-channel weight; where it factors so (checked), only the factors are
    kept, and its input need not stay alive at all."""

    @staticmethod
    def forward(ctx, x, holder, kept, norm):
        (y,) = holder  # handed over outside the inputs, so that it can be returned without a copy
        ctx.factors = _row_channel_factors(y, x) if norm else None
        if ctx.factors is None:
            ctx.kept, ctx.y = kept, kept.keep(y)
            ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        if ctx.factors is not None:
            rows, channels = ctx.factors
            return g * rows * channels, None, None, None
        (x,) = ctx.saved_tensors
        y = ctx.kept.values(ctx.y)
        if y is None:
            raise RuntimeError("the output of an element-wise module was changed in place by an op relprop did not "
                               "see; run the model with that change written out of place")
        if torch.is_grad_enabled():  # differentiable mode: plain ops, with the ratio a constant as in the forward
            y, x = y.detach(), x.detach()
            safe = torch.where(x == 0, torch.ones_like(x), x)
            return torch.where(x == 0, torch.zeros_like(g), g * (y / safe)), None, None, None
        return _ratio_times(g, y, x), None, None, None


def _row_channel_factors(y: torch.Tensor, x: torch.Tensor):
    """(rows, channels) with y / x == rows * channels up to a few roundings, or None when it does not factor so."""
    if y.dim() < 2 or y.numel() < 4 * y.shape[-1]:
        return None
    # in float32 at least, so that the check is as strict as the roundings in the module's own dtype allow
    work = torch.promote_types(y.dtype, torch.float32)
    ratio = y.to(work) / x.to(work)
    flat = ratio.reshape(-1, ratio.shape[-1])
    channels = flat.mean(0)
    norm = channels.square().sum()
    if not torch.isfinite(norm) or norm == 0:  # an exact zero in x, or nothing to factor
        return None
    rows = (flat @ channels).div_(norm).unsqueeze(-1)
    quotient = flat.div_(rows).div_(channels)  # in the ratio's own memory: this runs on every call
    info = torch.finfo(y.dtype)
    if info.bits < 32:  # where y underflowed its dtype, y / x says little; the factors are the better value there
        quotient.masked_fill_(y.reshape(flat.shape).abs() < info.smallest_normal, 1.0)
    low, high = torch.aminmax(quotient)
    if not bool((high - 1 <= 8 * info.eps) & (1 - low <= 8 * info.eps)):
        return None
    return rows.reshape(y.shape[:-1] + (1,)).to(y.dtype), channels.to(y.dtype)


def pass_module(x: torch.Tensor, y: torch.Tensor, kept: KeptOutput, norm: bool) -> torch.Tensor:
    return PassModule.apply(x, [y.detach()], kept, norm)


ELEMENTWISE_MODULE = re.compile(r".*RMSNorm|.*(GELU|SiLU|Swish|Mish)\w*Activation|.*GELUTanh|QuickGELU")


def is_elementwise_module(module, extra_types=()) -> bool:
    """Modules computed element-wise from pieces without rules of their own (pow, rsqrt, tanh of a polynomial)."""
    if extra_types and isinstance(module, tuple(extra_types)):
        return True
    return _elementwise_type(type(module))


@functools.lru_cache(maxsize=1024)
def _elementwise_type(kind: type) -> bool:
    """The name test, once per module class (it ran on every module call: about 1 ms of a ResNet-50 explanation)."""
    return ELEMENTWISE_MODULE.fullmatch(kind.__name__) is not None


class Rescale(torch.autograd.Function):
    """DeepLift's element-wise y = f(x): backward multiplies by (f(x) - f(x0)) / (x - x0), by f'(x) where x and x0
    meet. ``in_place`` (the op itself, when the model asked for it in place) overwrites z as the model expects."""

    @staticmethod
    def forward(ctx, z, fn, in_place, pairing, eps):
        n = pairing.rows
        dx = z[:n] - pairing.reference(z)
        meet, slope = None, None
        if eps > 0 and dx.numel() and bool(dx.abs().amin() < eps):  # there the quotient is inexact or 0 / 0
            meet = dx.abs() < eps
            with torch.enable_grad():
                leaf = z.detach().requires_grad_(True)
                (slope,) = torch.autograd.grad(fn(leaf).sum(), leaf)
        if in_place is None:
            y = fn(z)
        else:
            y = in_place(z)
            ctx.mark_dirty(z)
        multiplier = (y[:n] - pairing.reference(y)).div_(dx)
        if meet is not None:
            multiplier = torch.where(meet, slope[:n], multiplier)
        ctx.pairing = pairing
        ctx.save_for_backward(multiplier)
        return y

    @staticmethod
    def backward(ctx, g):
        (multiplier,) = ctx.saved_tensors
        return ctx.pairing.scaled(g, multiplier), None, None, None, None


def rescale(dl, func, name, args, kwargs, active):
    """DeepLift handler of an element-wise op: the Rescale rule."""
    if not reference.one_activation(dl, args, active):
        return dl.fallback(func, name, args, kwargs, "its input is not one batch-first activation")
    in_place = None
    if reference.modifies_input(name, args, kwargs):
        in_place = lambda t: func(t, *args[1:], **kwargs)  # noqa: E731
    return Rescale.apply(args[0], out_of_place(func, name, args, kwargs), in_place, dl.pairing, dl.eps)


@register("pointwise", deeplift=rescale)
def pointwise(ctx, func, name, args, kwargs):
    return ctx.unknown(func, name, args, kwargs)


_GATES = {"sigmoid", "hardsigmoid"}  # outputs in [0, 1] that scale a signal: gates in products


@register("activation", deeplift=rescale)
def activation(ctx, func, name, args, kwargs):
    x = args[0]
    fn = out_of_place(func, name, args, kwargs)
    row = ctx.row(name, "Pass")
    out = pass_through(ctx.tap(x, row), fn)
    ctx.watch(out, row)
    if name.rsplit(".", 1)[-1].rstrip("_") in _GATES or ctx.composite.gates == "activation":
        ctx.facts.set_gate(out)
    return out


class Suspended:
    """An element-wise module running with interception off: its output is explained as one pass-through op (or,
    for a module ruled as a whole, by its rule's finish)."""

    def __init__(self, module, x, differentiable: bool, rule=None):
        self.module, self.x = module, x
        self.rule = rule  # finish(output) of a module ruled as a whole (ops.table.MODULES), else pass-through
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(differentiable)  # its inner ops need no graph ("run" restores it on errors)

    def release(self):
        torch.set_grad_enabled(self.grad)

    def finish(self, ctx, output):
        """The module's output, with relevance passing through it to its input."""
        self.release()
        if self.rule is not None:
            return self.rule(output)
        x, module = self.x, self.module
        if not (isinstance(output, torch.Tensor) and output.shape == x.shape and output.is_floating_point()):
            ctx.unsupported(type(module).__name__, "treated as element-wise, but its output is not shaped like its "
                                                   "input")
            return output
        row = ctx.row(type(module).__name__ + " (element-wise module)", "Pass")
        kept = KeptOutput()
        norm = "Norm" in type(module).__name__
        output = pass_module(ctx.tap(x, row), output, kept, norm)
        ctx.facts.set_call(output, kept)
        if not norm and ctx.composite.gates == "activation":
            ctx.facts.set_gate(output)
        ctx.mark(output)
        ctx.watch(output, row)
        return output
