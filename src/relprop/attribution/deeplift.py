"""DeepLift with the Rescale rule (Shrikumar et al. 2017) and DeepLiftShap, by op interception.

The model runs once on the batch [inputs; baselines] while a TorchFunctionMode watches every torch function, so
ops written in ``forward`` (``torch.relu``, ``F.gelu``, ``x * gate``), modules used more than once and in-place ops
are all seen. Ops that touch the input get a backward that carries DeepLift multipliers instead of gradients:

  element-wise nonlinearity y = f(x)   (ReLU, GELU, sigmoid, tanh, exp, clamp, x ** 2, ...)
      multiplier (f(x) - f(x0)) / (x - x0), the gradient f'(x) where |x - x0| < eps
  max-pooling (fixed or adaptive windows)
      each window's output difference y - y0 goes to one input: the maximum of x if y >= y0, else the maximum of
      x0, with multiplier (y - y0) / (x_i - x0_i), which lies in [0, 1]. So differences add up exactly, and a window
      whose baseline held the larger maximum still hands back its (negative) difference. Windows that overlap
      (ResNet's 3x3 stride-2 pool) add their shares at an input they share.
  product of two activations, or any op of degree 2 in them (x * gate, matmul, bmm, einsum of two, addcmul, ...)
      the gradient at the midpoint (a + a0) / 2, (b + b0) / 2: exact for such ops, and the two-player Shapley split
  linear ops (convolutions, linear layers, sums, pooling by averages, batch norm in eval mode, reshapes, ...)
      the gradient, exact for them
  every other nonlinear op of the input (softmax, log-softmax, layer/group/RMS norm, division by an activation,
  max over a dimension, products of three or more activations; fused attention runs as its decomposition)
      the op's Jacobian averaged along the straight path from reference to input,
          M = sum_k w_k J(x0 + t_k (x - x0)),  Gauss-Legendre nodes t_k, weights w_k on [0, 1],
      which converges fast on these smooth ops; what the quadrature leaves over, r = g . (y - y0) - (M^T g) . (x - x0)
      per sample, is added along x - x0 (+ r (x - x0) / |x - x0|^2), so that summation-to-delta holds exactly
  an op of the input that no family claims
      the same path-averaged Jacobian, with a warning naming it (it may be any function: check ``delta``)

This is an allow-list: an op is taken as linear (its gradient) only where its family says so. ``explain_logits``
follows the DeepLift paper's advice for a softmax at the output: the logits before it are explained instead (the
result says so in ``explained_logits``).

Batch norm or dropout in training mode would treat inputs and baselines differently and raise an error. Each
distinct baseline runs once: a baseline shared by the batch (a number, one sample) adds a single row to the pass,
and baselines never need a gradient, so with many of them convolutions run them without one.

The parameters and semantics follow captum's ``DeepLift`` / ``DeepLiftShap`` so users can switch: ``baseline``
(captum's ``baselines``), ``multiply_by_inputs``, ``custom_attribution_func(multipliers[, inputs[, baselines]])``
(called with tensors here, not tuples), ``eps``. ``delta`` is ``explained - relevance.sum()`` with ``explained``
the target's output difference f(x) - f(baseline): captum's convergence delta with the opposite sign.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..engine import DataFlow, UnsupportedOpWarning, caller_level, classify, out_of_place
from ..explanation import Explanation
from ..lrp import output_gradient
from ..ops import attention, recurrent
from ..ops.table import FAMILIES, deeplift_kind, is_inplace
from .base import Attribution, baseline_like, batched, input_gradient, per_sample_sum, positional_count, rows_of

T, F = "torch.Tensor.", "torch.nn.functional."


def _names(*names: str, prefixes=("torch.", T)) -> set[str]:
    return {prefix + name for prefix in prefixes for name in names}


ELEMENTWISE = ({name for name, family in FAMILIES.items() if family == "activation"}
               | _names("relu", "relu_", "leaky_relu", "leaky_relu_", prefixes=("torch.", T, F))
               | _names("threshold", "threshold_", prefixes=(F,))
               | _names("abs", "abs_", "exp", "exp_", "log", "log_", "log1p", "expm1", "sqrt", "rsqrt", "square",
                        "sin", "cos", "reciprocal", "erf", "erfc", "clamp", "clamp_", "clip", "clip_", "clamp_min",
                        "clamp_max", "pow", "pow_", "__pow__", "__ipow__"))
MAX_POOLS = (_names("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                    "adaptive_max_pool3d", prefixes=(F,)) | _names("max_pool1d", "max_pool2d", "max_pool3d",
                                                                   prefixes=("torch.",)))
# Ops of degree two in their operands: the gradient at the midpoint of input and baseline is exact for them.
QUADRATIC = _names("mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "matmul", "__matmul__",
                   "__rmatmul__", "mm", "bmm", "outer", "inner", "dot", "tensordot", "einsum", "addmm", "baddbmm",
                   "addcmul", "addcmul_")
NONLINEAR = _names("max", "min", "amax", "amin", "sort", "topk", "cummax", "cummin", "prod", "div", "div_",
                   "__truediv__", "__rtruediv__", "__itruediv__", "divide", "true_divide", "maximum", "minimum")
PATH_NODES = 8  # Gauss-Legendre nodes for a path-averaged Jacobian: error ~ the 16th derivative along the path
DROPOUT = _names("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                 prefixes=(F,))


class Pairing:
    """How a pass's batch [inputs; references] pairs up: input row i is compared with reference row which[i].

    References are held once each (a baseline shared by the batch runs as a single row), so ``which`` is None
    when they align one-to-one with the inputs or are a single row that broadcasts.
    """

    def __init__(self, rows: int, references: int, which: torch.Tensor | None):
        self.rows, self.total, self.which = rows, rows + references, which
        self.many = references > 1

    def reference(self, tensor: torch.Tensor) -> torch.Tensor:
        """The reference value paired with each input row (broadcasting when all share one)."""
        part = tensor[self.rows:]
        return part if self.which is None else part[self.which]

    def fits(self, tensor: torch.Tensor) -> bool:
        return tensor.dim() > 0 and len(tensor) == self.total

    def pad(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient for the whole batch from one for the input rows: references never need one."""
        return torch.cat([grad, grad.new_zeros((self.total - self.rows,) + grad.shape[1:])])

    def scaled(self, g: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        """pad(g[:rows] * multiplier), written in place into one buffer."""
        out = torch.empty_like(g)
        torch.mul(g[:self.rows], multiplier, out=out[:self.rows])
        out[self.rows:] = 0
        return out


class Rescale(torch.autograd.Function):
    """Element-wise y = f(x): backward multiplies by (f(x) - f(x0)) / (x - x0), by f'(x) where x and x0 meet.

    ``in_place`` (the op itself, when the model asked for it in place) overwrites z as the model expects.
    """

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


class Winner(torch.autograd.Function):
    """Max-pooling: each window's y - y0 goes to the maximum of x or of x0, whichever pooled the larger value.

    Works at the pooled resolution from the pool's own argmax indices (flat per channel, as every max-pool gives
    them), and adds shares where overlapping windows pick the same input.
    """

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


class Midpoint(torch.autograd.Function):
    """An op of degree two in its active operands: backward is its gradient at the operands' midpoints."""

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


class PathAveraged(torch.autograd.Function):
    """A nonlinear op of several inputs: backward is its Jacobian averaged from reference to input, made exact."""

    @staticmethod
    def forward(ctx, fn, pairing, *operands):
        out = fn(*operands)
        outputs = out if isinstance(out, tuple) else (out,)
        ctx.fn, ctx.pairing, ctx.count = fn, pairing, len(operands)
        ctx.float_outputs = [i for i, o in enumerate(outputs) if isinstance(o, torch.Tensor) and o.is_floating_point()]
        ctx.mark_non_differentiable(*(o for i, o in enumerate(outputs)
                                      if isinstance(o, torch.Tensor) and i not in ctx.float_outputs))
        ctx.save_for_backward(*operands, *(outputs[i] for i in ctx.float_outputs))
        return tuple(outputs) if isinstance(out, tuple) else out

    @staticmethod
    def backward(ctx, *grads):
        pairing, n = ctx.pairing, ctx.pairing.rows
        operands, outputs = ctx.saved_tensors[:ctx.count], ctx.saved_tensors[ctx.count:]
        g = [grads[i] for i in ctx.float_outputs]
        deltas = [_finite(operand[:n] - pairing.reference(operand)) for operand in operands]
        averaged = [torch.zeros_like(delta) for delta in deltas]
        for node, weight in zip(*_gauss_legendre(PATH_NODES)):
            points = [torch.cat([pairing.reference(operand).expand_as(delta) + node * delta, operand[n:]])
                      .requires_grad_(True) for operand, delta in zip(operands, deltas)]
            with torch.enable_grad():
                out = ctx.fn(*points)
                outputs_at = out if isinstance(out, tuple) else (out,)
                selected = [outputs_at[i] for i in ctx.float_outputs]
                parts = torch.autograd.grad(selected, points, [pairing.pad(gi[:n]) for gi in g], allow_unused=True)
            for total, part in zip(averaged, parts):
                if part is not None:
                    total.add_(part[:n], alpha=weight)
        # What the quadrature missed, per sample, goes along x - x0: then sum (x - x0) m = g . (y - y0) exactly.
        explained = sum(per_sample_sum(gi[:n] * _finite(out[:n] - pairing.reference(out))) for gi, out in zip(g, outputs))
        carried = sum(per_sample_sum(m * delta) for m, delta in zip(averaged, deltas))
        norm = sum(per_sample_sum(delta * delta) for delta in deltas)
        factor = torch.where(norm > 0, (explained - carried) / norm.clamp(min=torch.finfo(norm.dtype).tiny), 0.0)
        result = []
        for m, delta in zip(averaged, deltas):
            m.add_(factor.reshape((-1,) + (1,) * (delta.dim() - 1)) * delta)
            result.append(pairing.pad(m))
        return (None, None) + tuple(result)


def _finite(difference: torch.Tensor) -> torch.Tensor:
    """x - x0 with 0 where both are the same infinity (a masked attention score): nothing changes there."""
    return difference.nan_to_num(nan=0.0)


_NODES: dict[int, tuple] = {}


def _gauss_legendre(count: int):
    """Nodes and weights of Gauss-Legendre quadrature on [0, 1]."""
    if count not in _NODES:
        nodes, weights = np.polynomial.legendre.leggauss(count)
        _NODES[count] = (((nodes + 1) / 2).tolist(), (weights / 2).tolist())
    return _NODES[count]


class _Interceptor(TorchFunctionMode):
    """Routes each op that touches the input through its DeepLift backward while the model runs."""

    def __init__(self, pairing: Pairing, eps: float, warned: set, explain_logits: bool = False):
        super().__init__()
        self.pairing, self.eps, self.warned = pairing, eps, warned
        self.softmax_inputs = {} if explain_logits else None  # id(softmax output) -> (output, its input)
        self.flow = DataFlow("_relprop_deeplift")
        self.mark, self.active = self.flow.mark, self.flow.active

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, family = classify(func)
        if family == "quiet":
            return func(*args, **kwargs)
        active = self.flow.touched(args, kwargs)
        if not active:
            return func(*args, **kwargs)
        out = self.dispatch(func, name, family, args, kwargs, active)
        self.mark(out)
        return out

    def dispatch(self, func, name, family, args, kwargs, active):
        first = args[0] if args else None
        paired = all(self.pairing.fits(t) for t in active)
        if name in ELEMENTWISE or name in MAX_POOLS:
            if len(active) != 1 or first is not active[0] or not paired:
                return self.fallback(func, name, args, kwargs, "its input is not one batch-first activation")
            if name in MAX_POOLS:
                if first.dim() < 3:
                    return self.fallback(func, name, args, kwargs, "its input has no channel dimension")
                return self.max_pool(first, name, args, kwargs)
            in_place = None
            if _modifies_input(name, args, kwargs):
                in_place = lambda t: func(t, *args[1:], **kwargs)  # noqa: E731
            return Rescale.apply(first, out_of_place(func, name, args, kwargs), in_place, self.pairing,
                                 self.eps)
        if name in QUADRATIC and len(active) > 1:
            return self.quadratic(func, name, args, kwargs, active, paired)
        if name in DROPOUT and _argument(args, kwargs, 2, "training", True) and _argument(args, kwargs, 1, "p", 0.5):
            raise ValueError(f"{name} is active (training=True): inputs and baselines would be dropped differently. "
                             "Call model.eval() first (functional dropout: pass training=self.training)")
        if family == "batch_norm" and _argument(args, kwargs, 5, "training", False):
            raise ValueError("batch norm uses batch statistics (the model is in training mode), so inputs and "
                             "baselines, which run in one batch, would be normalised together. Call model.eval() "
                             "first")
        kind = deeplift_kind(family)  # what the op's family says (ops/table.py): an allow-list
        if family == "attention":  # fused: its products and softmax get their own multipliers
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
            with self:
                return attention.scaled_dot_product(**dict(zip(names, args)), **kwargs)
        if family == "recurrent":  # fused LSTM/GRU/RNN: its time steps' ops get their own multipliers
            bound = recurrent.bind_call(name, args, kwargs)
            if bound.get("batch_sizes") is not None:
                return self.fallback(func, name, args, kwargs, "its input is packed (rows sorted by length, so "
                                                               "inputs no longer pair with their baselines)")
            with self:
                return recurrent.run(bound)
        if family == "multi_head_attention":
            bound = dict(zip(attention.MHA_ARGS, args), **kwargs)
            for key, value in attention.MHA_DEFAULTS.items():
                bound.setdefault(key, value)
            why = attention.multi_head_supported(bound)
            if why is not None:
                return self.fallback(func, name, args, kwargs, why)
            with self:
                return attention.multi_head(**bound)
        if kind == "divide" and not self._divides_by_active(name, args, kwargs):
            return func(*args, **kwargs)
        if name not in NONLINEAR and (kind == "linear" or (kind == "product" and len(active) == 1)):
            if family == "conv" and first is active[0] and len(active) == 1 and paired and self.pairing.many:
                return self.convolution(func, args, kwargs)
            return func(*args, **kwargs)
        if kind is None:
            self.warn(name, "DeepLift knows no rule for it; its Jacobian averaged along the path from baseline to "
                            "input is used (exact in sum, but check that the op acts on each sample alone)")
        out = self.path_averaged(func, name, args, kwargs, active, paired)
        if self.softmax_inputs is not None and family in ("softmax", "log_softmax") and isinstance(out, torch.Tensor):
            self.softmax_inputs[id(out)] = (out, args[0] if args else kwargs.get("input"))
        return out

    def path_averaged(self, func, name, args, kwargs, active, paired):
        if not paired:
            return self.fallback(func, name, args, kwargs, "its inputs are not batch-first activations")
        if _modifies_input(name, args, kwargs):
            return self.fallback(func, name, args, kwargs, "it runs in place")
        operands, fn = self.operands(func, args, kwargs)
        if len(operands) != len(active):
            return self.fallback(func, name, args, kwargs, "its inputs come in a list")
        returned = []

        def plain_tuples(*values):
            out = fn(*values)
            returned.append(type(out))
            return tuple(out) if isinstance(out, tuple) else out

        out = PathAveraged.apply(plain_tuples, self.pairing, *operands)
        if isinstance(out, tuple) and returned[0] is not tuple:
            out = returned[0](out)  # torch.return_types.max and friends
        return out

    def operands(self, func, args, kwargs):
        """The active tensors among an op's arguments, and func as a function of them alone."""
        positions = [i for i, value in enumerate(args) if self.active(value)]
        keys = [k for k, value in kwargs.items() if self.active(value)]

        def fn(*operands):
            call_args, call_kwargs = list(args), dict(kwargs)
            for position, operand in zip(positions, operands):
                call_args[position] = operand
            for key, operand in zip(keys, operands[len(positions):]):
                call_kwargs[key] = operand
            return func(*call_args, **call_kwargs)

        return [args[p] for p in positions] + [kwargs[k] for k in keys], fn

    def max_pool(self, z, name, args, kwargs):
        names = ("input", "output_size") if "adaptive" in name else (
            "input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
        options = dict(zip(names[1:], args[1:]))
        options.update(kwargs)
        wants_indices = bool(options.pop("return_indices", False)) or len(args) > len(names) and bool(args[-1])
        pool = getattr(torch.nn.functional, name.rsplit(".", 1)[-1])
        values, indices = Winner.apply(z, lambda t: pool(t, **options, return_indices=True), self.pairing,
                                       self.eps)
        return (values, indices) if wants_indices else values

    def quadratic(self, func, name, args, kwargs, active, paired):
        degree_two = name.rsplit(".", 1)[-1] in ("addmm", "baddbmm", "addcmul", "addcmul_") or len(active) == 2
        if not (paired and degree_two):
            return self.path_averaged(func, name, args, kwargs, active, paired)
        if is_inplace(name):
            func = {"addcmul_": torch.addcmul}.get(name.rsplit(".", 1)[-1], torch.mul)
        operands, fn = self.operands(func, args, kwargs)
        if len(operands) != len(active):  # operands inside lists (einsum(eq, [a, b]))
            return self.fallback(func, name, args, kwargs, "its operands come in a list")
        if is_inplace(name):  # the first operand is about to be overwritten; the backward needs its value
            operands = [operand.clone() for operand in operands]
            return args[0].copy_(Midpoint.apply(fn, self.pairing, *operands))
        return Midpoint.apply(fn, self.pairing, *operands)

    def convolution(self, func, args, kwargs):
        """A convolution over many references: they run without gradient (they never need one), which saves their
        share of the backward pass. (Dense layers are left whole: at small batches they are bound by reading their
        weights, which a second call would double.)"""
        z = args[0]
        rows = self.pairing.rows
        out = func(z[:rows], *args[1:], **kwargs)
        with torch.no_grad():
            reference = func(z[rows:], *args[1:], **kwargs)
        return torch.cat([out, reference])

    def _divides_by_active(self, name, args, kwargs):
        denominator = args[0] if name.endswith("__rtruediv__") else (args[1] if len(args) > 1 else kwargs.get("other"))
        return self.active(denominator)

    def fallback(self, func, name, args, kwargs, why):
        out = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
               for t in (out if isinstance(out, (tuple, list)) else (out,))):
            self.warn(name, f"it is nonlinear and {why}; its gradient is used there, so the attributions may not add "
                            "up to the output difference (see Explanation.delta)")
        return out

    def warn(self, name, why):
        if name not in self.warned:
            self.warned.add(name)
            warnings.warn(f"relprop DeepLift: {name}: {why}", UnsupportedOpWarning, stacklevel=caller_level())


def _argument(args, kwargs, position, key, default):
    if key in kwargs:
        return kwargs[key]
    return args[position] if len(args) > position else default


def _modifies_input(name, args, kwargs) -> bool:
    return is_inplace(name) or bool(kwargs.get("inplace")) or (name.startswith(F) and len(args) > 1
                                                               and args[-1] is True)


class DeepLift(Attribution):
    """DeepLift with the Rescale rule: attributions add up to f(x) - f(baseline) for the target.

    baseline: a number, one sample (shared by the batch) or one baseline per sample; can be overridden per call.
    multiply_by_inputs: attributions are (x - baseline) * multipliers (global); False gives the multipliers alone.
    custom_attribution_func: f(multipliers), f(multipliers, inputs) or f(multipliers, inputs, baselines) returning
    the attributions (tensors shaped like x), replacing the default.
    eps: below this |x - x0| an element-wise op uses its gradient. batch_size: the most model inputs in one pass
    (each input runs with its baseline, so a pass holds batch_size / 2 pairs). forward, feature_names: as for LRP.
    explain_logits: when the output comes straight from a softmax or log-softmax, explain the logits before it
    (``explained_logits`` says so).
    ``gradient`` holds the multipliers.
    """

    def __init__(self, model, baseline=0.0, multiply_by_inputs: bool = True,
                 custom_attribution_func: Callable | None = None, eps: float = 1e-10, batch_size: int | None = None,
                 output=None, forward=None, feature_names=None, explain_logits: bool = False):
        super().__init__(model, batch_size, output, forward, feature_names)
        if not isinstance(explain_logits, bool):
            raise TypeError(f"explain_logits must be True or False, got {explain_logits!r}")
        self.explain_logits = explain_logits
        if custom_attribution_func is not None:
            if not callable(custom_attribution_func):
                raise TypeError("custom_attribution_func must be callable as f(multipliers), f(multipliers, inputs) "
                                "or f(multipliers, inputs, baselines)")
            if positional_count(custom_attribution_func) not in (1, 2, 3):
                raise ValueError("custom_attribution_func must take 1 to 3 arguments: (multipliers[, inputs[, "
                                 "baselines]])")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.baseline = baseline
        self.multiply_by_inputs = bool(multiply_by_inputs)
        self.custom_attribution_func = custom_attribution_func
        self.eps = float(eps)
        self._warned: set = set()

    def __call__(self, x: torch.Tensor, target=None, *, baseline=None) -> Explanation:
        target = self.check(x, target)
        x = x.detach()
        baseline = self.baseline if baseline is None else baseline
        reference = baseline_like(x, baseline)
        if _shared(x, baseline):  # one baseline for the whole batch: it runs once, not once per sample
            bank, which = reference[:1].contiguous(), torch.zeros(len(x), 1, dtype=torch.long, device=x.device)
        else:
            bank, which = reference, torch.arange(len(x), device=x.device).unsqueeze(1)
        explanation = self.attribute(x, target, bank, which)
        del explanation.details["delta_per_baseline"]  # one baseline: the same as delta
        return explanation

    def attribute(self, x: torch.Tensor, target, bank: torch.Tensor, which: torch.Tensor) -> Explanation:
        """Attributions of x against baselines bank[which[n, b]] for each sample n and each b, averaged over b."""
        samples, count = which.shape
        multipliers = x.new_empty((samples, count) + x.shape[1:])
        change = x.new_empty(samples, count)
        output, index, logits = None, None, False
        copies = ((x, which[:, b]) for b in range(count))
        pairs_per_pass = max(1, self.rows_per_pass(x) - 1 if len(bank) == 1 else self.rows_per_pass(x) // 2)
        for (inputs, chosen), sample, number in batched(copies, pairs_per_pass):
            used, pick = torch.unique(chosen, return_inverse=True)
            if len(used) == 1 or bool((pick == torch.arange(len(pick), device=pick.device)).all()):
                pick = None  # one shared reference broadcasts, aligned ones pair by position
            m, out, difference, classes, logits = self.multipliers(inputs, bank[used], pick, rows_of(target, sample))
            multipliers[sample, number] = m
            change[sample, number] = difference
            if output is None:
                output = out.new_empty((samples,) + out.shape[1:])
                index = None if classes is None else classes.new_empty(samples)
            output[sample] = out
            if index is not None:
                index[sample] = classes
        references = bank[which]
        inputs = x.unsqueeze(1).expand_as(references)
        attributions = self.combine(multipliers.flatten(0, 1), inputs.flatten(0, 1), references.flatten(0, 1))
        attributions = attributions.reshape(references.shape)
        # Per pair: f(x) - f(x0_b) - sum of its attributions; their mean over the baselines is explained - sum.
        pair_delta = change - attributions.flatten(2).sum(2)
        return Explanation(attributions.mean(1), output, change.mean(1), pair_delta.mean(1), index,
                           explained_logits=logits, gradient=multipliers.mean(1), feature_names=self.feature_names,
                           details={"delta_per_baseline": pair_delta})

    def combine(self, multipliers, inputs, baselines):
        custom = self.custom_attribution_func
        if custom is None:
            return (inputs - baselines) * multipliers if self.multiply_by_inputs else multipliers
        attributions = custom(*(multipliers, inputs, baselines)[:positional_count(custom)])
        if isinstance(attributions, (tuple, list)) and len(attributions) == 1:
            attributions = attributions[0]
        if not isinstance(attributions, torch.Tensor) or attributions.shape != multipliers.shape:
            shape = getattr(attributions, "shape", type(attributions).__name__)
            raise ValueError(f"custom_attribution_func must return a tensor shaped like its multipliers "
                             f"{tuple(multipliers.shape)}, got {shape}")
        return attributions

    def multipliers(self, inputs, references, pick, target):
        """One pass over [inputs; references], input i paired with references[pick[i]] (pick None: aligned or
        one shared): (multipliers, output at inputs, f(x) - f(x0), class index or None, logits explained)."""
        pairing = Pairing(len(inputs), len(references), pick)
        leaf = inputs.detach().requires_grad_(True)
        batch = torch.cat([leaf, references])
        interceptor = _Interceptor(pairing, self.eps, self._warned, self.explain_logits)
        interceptor.mark(batch)
        with torch.enable_grad(), interceptor:
            output = self.run(batch)
        if not pairing.fits(output):
            raise ValueError(f"the model's output has shape {tuple(output.shape)}, but DeepLift runs inputs and "
                             f"baselines as one batch of {pairing.total} and needs one output per sample along the "
                             "first dimension")
        explained, logits = output, False
        softmax = interceptor.softmax_inputs.get(id(output)) if interceptor.softmax_inputs is not None else None
        if softmax is not None and softmax[0] is output and softmax[1].shape == output.shape:
            explained, logits = softmax[1], True
        at_input, at_reference = explained[:pairing.rows], pairing.reference(explained)
        g, index = output_gradient(at_input.detach(), target)
        multipliers = input_gradient(at_input, leaf, g)
        change = per_sample_sum((at_input - at_reference).detach() * g)
        return multipliers, output[:pairing.rows].detach(), change, index, logits


def _shared(x: torch.Tensor, baseline) -> bool:
    """Whether a baseline is the same for every sample (a number, or a tensor without a per-sample dimension)."""
    if not isinstance(baseline, torch.Tensor):
        return True
    return baseline.dim() < x.dim() or baseline.shape[0] == 1


class DeepLiftShap(DeepLift):
    """DeepLift against each baseline of a distribution, averaged: an approximation of SHAP values.

    baselines: a tensor of B >= 1 baseline samples (shape (B, *sample)), or a callable(x) returning one; can be
    overridden per call. ``explained`` is f(x) minus the mean of f over the baselines; ``delta`` is per sample,
    ``explained - relevance.sum()`` as for every method, which is the mean of the pairs' residuals;
    ``details["delta_per_baseline"]`` (N, B) keeps the residual of each input x baseline pair (captum's convergence
    delta with the opposite sign, which captum lists flat, input by input).
    """

    def __init__(self, model, baselines, multiply_by_inputs: bool = True,
                 custom_attribution_func: Callable | None = None, eps: float = 1e-10, batch_size: int | None = None,
                 output=None, forward=None, feature_names=None, explain_logits: bool = False):
        super().__init__(model, 0.0, multiply_by_inputs, custom_attribution_func, eps, batch_size, output, forward,
                         feature_names, explain_logits)
        self.baselines = baselines

    def __call__(self, x: torch.Tensor, target=None, *, baselines=None) -> Explanation:
        target = self.check(x, target)
        x = x.detach()
        baselines = self.baselines if baselines is None else baselines
        if callable(baselines) and not isinstance(baselines, torch.Tensor):
            baselines = baselines(x)
        if not isinstance(baselines, torch.Tensor):
            raise TypeError(f"baselines must be a tensor of baseline samples or a callable(x) returning one, got "
                            f"{type(baselines).__name__}")
        if baselines.dim() != x.dim() or tuple(baselines.shape[1:]) != tuple(x.shape[1:]) or len(baselines) < 1:
            raise ValueError(f"baselines has shape {tuple(baselines.shape)}; give B >= 1 baseline samples shaped "
                             f"like x's samples: (B, {', '.join(str(s) for s in x.shape[1:])})")
        baselines = baselines.detach().to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(baselines).all()):
            raise ValueError("baselines contains NaN or infinite values")
        which = torch.arange(len(baselines), device=x.device).expand(len(x), len(baselines))
        return self.attribute(x, target, baselines, which)
