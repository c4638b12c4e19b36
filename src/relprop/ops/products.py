"""Products of two or more activations (gating, attention): relevance split uniformly among the factors.

Gradient x input over a product of k activation factors hands each factor the whole output relevance (Euler's
theorem for functions homogeneous of degree k), so k times too much in total; scaling the gradient reaching each
factor by 1/k splits it evenly. The scaling sits on the factors (views consumed by the product alone), so the
product's output stays an ordinary tensor that the model may change in place.

A sigmoid output (or, under CP-LRP, any activation) scaling a signal is a gate: it gets no relevance, the signals
share it. Division by a constant is linear (its gradient); division by an activation has no rule.

DeepLift: an op of degree two in its active operands (x * gate, matmul, bmm, einsum of two, addcmul, ...) takes its
gradient at the midpoint (a + a0) / 2, (b + b0) / 2, exact for such ops and the two-player Shapley split; a product
with a constant is linear; products of three or more activations, ``prod`` and division by an activation take the
path-averaged Jacobian (ops/reference.py).
"""
import torch

from . import linear, reference
from .signatures import plain_variant
from .table import is_inplace, register


class ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    return ScaleGradient.apply(x, factor)


class Midpoint(torch.autograd.Function):
    """DeepLift's op of degree two in its active operands: backward is its gradient at the operands' midpoints."""

    @staticmethod
    def forward(ctx, fn, pairing, *operands):
        ctx.fn, ctx.pairing = fn, pairing
        ctx.save_for_backward(*operands)
        return fn(*operands)

    @staticmethod
    def backward(ctx, g):
        pairing, n = ctx.pairing, ctx.pairing.rows
        middles = []
        for operand in ctx.saved_tensors:
            middle = (operand[:n] + pairing.reference(operand)) / 2
            middles.append(torch.cat([middle, operand[n:]]).requires_grad_(True))
        with torch.enable_grad():
            y = ctx.fn(*middles)
        grads = torch.autograd.grad(y, middles, pairing.pad(g[:n]), allow_unused=True)
        return (None, None) + tuple(None if grad is None else pairing.pad(grad[:n]) for grad in grads)


_BILINEAR_OF_THREE = ("addmm", "baddbmm", "addcmul", "addcmul_")  # degree two, whatever the added term


def product_deeplift(dl, func, name, args, kwargs, active):
    short = name.rsplit(".", 1)[-1]
    if short == "prod":
        return reference.path_averaged(dl, func, name, args, kwargs, active)
    if len(active) == 1:
        return func(*args, **kwargs)  # a product with constants: linear
    paired = all(dl.pairing.fits(t) for t in active)
    if not (paired and (short in _BILINEAR_OF_THREE or len(active) == 2)):
        return reference.path_averaged(dl, func, name, args, kwargs, active)
    if is_inplace(name):
        func = {"addcmul_": torch.addcmul}.get(short, torch.mul)
    operands, fn = reference.operands(dl, func, args, kwargs)
    if len(operands) != len(active):  # operands inside lists (einsum(eq, [a, b]))
        return dl.fallback(func, name, args, kwargs, "its operands come in a list")
    if is_inplace(name):  # the first operand is about to be overwritten; the backward needs its value
        operands = [operand.clone() for operand in operands]
        return args[0].copy_(Midpoint.apply(fn, dl.pairing, *operands))
    return Midpoint.apply(fn, dl.pairing, *operands)


def denominator(name, args, kwargs):
    """The divisor of a division op."""
    return args[0] if name.endswith("__rtruediv__") else (args[1] if len(args) > 1 else kwargs.get("other"))


def divide_deeplift(dl, func, name, args, kwargs, active):
    if dl.active(denominator(name, args, kwargs)):
        return reference.path_averaged(dl, func, name, args, kwargs, active)
    return func(*args, **kwargs)  # by a constant: linear


@register("product", deeplift=product_deeplift)
def product(ctx, func, name, args, kwargs):
    if (name == "torch.addmm" and len(args) >= 3 and not kwargs and not ctx.active(args[0])
            and ctx.active(args[1]) and not ctx.active(args[2])):
        # bias + x @ W, as GPT-2's Conv1D writes a linear layer
        return linear.linear_like(ctx, torch.nn.functional.linear, "torch.nn.functional.linear",
                                  (args[1], args[2].t(), args[0]), {}, "linear")
    active = ctx.touched(args, kwargs)
    if len(active) < 2:
        return ctx.plain(func, name, args, kwargs)
    gates = {id(t) for t in active if ctx.facts.is_gate(t)}
    if gates and len(gates) < len(active):
        # A sigmoid output scaling a signal is a gate: it decides how much passes but gets no relevance itself
        # (signal-take-all, as LRP does for LSTM and squeeze-and-excitation gates).
        signals = len(active) - len(gates)
        row = ctx.row(name, "Gate as constant" + (f", uniform over {signals} signals" if signals > 1 else ""))
        shares = {id(t): (0.0 if id(t) in gates else 1.0 / signals) for t in active}
    else:
        row = ctx.row(name, f"Uniform split over {len(active)} factors")
        shares = {id(t): 1.0 / len(active) for t in active}

    def scaled(value):
        if ctx.active(value):
            return scale_gradient(ctx.tap(value, row), shares[id(value)])
        if isinstance(value, (list, tuple)):
            return type(value)(scaled(v) for v in value)
        return value

    if is_inplace(name):
        func = plain_variant(name)
    out = func(*(scaled(a) for a in args), **{k: scaled(v) for k, v in kwargs.items()})
    ctx.watch(out, row)
    return out


@register("divide", deeplift=divide_deeplift)
def divide(ctx, func, name, args, kwargs):
    if ctx.active(denominator(name, args, kwargs)):
        return ctx.unknown(func, name + " (by an activation)", args, kwargs)
    return ctx.plain(func, name, args, kwargs)
