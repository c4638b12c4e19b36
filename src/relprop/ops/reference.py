"""What every family's DeepLift handler shares: inputs and references in one batch, and the path-averaged Jacobian.

DeepLift runs the model once on [inputs; references]. Each family registers a DeepLift handler next to its LRP
handler (``@register(family, deeplift=handler)``), called as ``handler(dl, func, name, args, kwargs, active)``
where ``dl`` is the run's narrow context (the engine's ``DeepLiftSession``): ``pairing`` (which rows pair up),
``eps``, ``active(value)``, ``fallback(func, name, args, kwargs, why)`` (the plain op, with a warning),
``warn(name, why)``, ``intercept()`` (interception on again, for a decomposition) and
``remember_softmax(out, logits)``.

The generic multiplier, for any nonlinear op of several inputs (softmax, norms, division by an activation, max over
a dimension), is the op's Jacobian averaged along the straight path from reference to input,

    M = sum_k w_k J(x0 + t_k (x - x0)),  Gauss-Legendre nodes t_k and weights w_k on [0, 1],

which converges fast on smooth ops; what the quadrature leaves over, r = g . (y - y0) - (M^T g) . (x - x0) per
sample, is added along x - x0 (+ r (x - x0) / |x - x0|^2), so that summation-to-delta holds exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from .table import is_inplace

PATH_NODES = 8  # Gauss-Legendre nodes for a path-averaged Jacobian: error ~ the 16th derivative along the path


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
        deltas = [finite(operand[:n] - pairing.reference(operand)) for operand in operands]
        averaged = [torch.zeros_like(delta) for delta in deltas]
        for node, weight in zip(*gauss_legendre(PATH_NODES)):
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
        explained = sum(_per_sample(gi[:n] * finite(out[:n] - pairing.reference(out))) for gi, out in zip(g, outputs))
        carried = sum(_per_sample(m * delta) for m, delta in zip(averaged, deltas))
        norm = sum(_per_sample(delta * delta) for delta in deltas)
        factor = torch.where(norm > 0, (explained - carried) / norm.clamp(min=torch.finfo(norm.dtype).tiny), 0.0)
        result = []
        for m, delta in zip(averaged, deltas):
            m.add_(factor.reshape((-1,) + (1,) * (delta.dim() - 1)) * delta)
            result.append(pairing.pad(m))
        return (None, None) + tuple(result)


def _per_sample(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(len(tensor), -1).sum(1)


def finite(difference: torch.Tensor) -> torch.Tensor:
    """x - x0 with 0 where both are the same infinity (a masked attention score): nothing changes there."""
    return difference.nan_to_num(nan=0.0)


_NODES: dict[int, tuple] = {}


def gauss_legendre(count: int):
    """Nodes and weights of Gauss-Legendre quadrature on [0, 1]."""
    if count not in _NODES:
        nodes, weights = np.polynomial.legendre.leggauss(count)
        _NODES[count] = (((nodes + 1) / 2).tolist(), (weights / 2).tolist())
    return _NODES[count]


def operands(dl, func, args, kwargs):
    """The active tensors among an op's arguments, and func as a function of them alone."""
    positions = [i for i, value in enumerate(args) if dl.active(value)]
    keys = [k for k, value in kwargs.items() if dl.active(value)]

    def fn(*values):
        call_args, call_kwargs = list(args), dict(kwargs)
        for position, value in zip(positions, values):
            call_args[position] = value
        for key, value in zip(keys, values[len(positions):]):
            call_kwargs[key] = value
        return func(*call_args, **call_kwargs)

    return [args[p] for p in positions] + [kwargs[k] for k in keys], fn


def exact(dl, func, name, args, kwargs, active):
    """DeepLift handler of a linear op: its gradient is the multiplier, exactly."""
    return func(*args, **kwargs)


def path_averaged(dl, func, name, args, kwargs, active):
    """DeepLift handler of a nonlinear op of several inputs: the path-averaged Jacobian (module docstring)."""
    if not all(dl.pairing.fits(t) for t in active):
        return dl.fallback(func, name, args, kwargs, "its inputs are not batch-first activations")
    if modifies_input(name, args, kwargs):
        return dl.fallback(func, name, args, kwargs, "it runs in place")
    values, fn = operands(dl, func, args, kwargs)
    if len(values) != len(active):
        return dl.fallback(func, name, args, kwargs, "its inputs come in a list")
    returned = []

    def plain_tuples(*points):
        out = fn(*points)
        returned.append(type(out))
        return tuple(out) if isinstance(out, tuple) else out

    out = PathAveraged.apply(plain_tuples, dl.pairing, *values)
    if isinstance(out, tuple) and returned[0] is not tuple:
        out = returned[0](out)  # torch.return_types.max and friends
    return out


def one_activation(dl, args, active) -> bool:
    """The op reads one batch-first activation, as its first argument (what element-wise rules need)."""
    first = args[0] if args else None
    return len(active) == 1 and first is active[0] and dl.pairing.fits(first)


def argument(args, kwargs, position, key, default):
    if key in kwargs:
        return kwargs[key]
    return args[position] if len(args) > position else default


def modifies_input(name, args, kwargs) -> bool:
    return is_inplace(name) or bool(kwargs.get("inplace")) or (name.startswith("torch.nn.functional.")
                                                               and len(args) > 1 and args[-1] is True)
