"""Normalisation layers: the standard deviation (and batch statistics) treated as constants.

Layer, group, instance and RMS norm are homogeneous of degree 0 in their input, so their plain gradient x input
sums to zero. Taking 1/std as a constant makes them linear maps, and relevance then passes through (minus what the
affine bias absorbs). The forward value is the library's own op, bit for bit; only the backward differs.

Batch norm in eval mode is an affine map per channel (its gradient); with the MergeBatchNorm canonizer, a batch norm
reading the output of a linear-like op under a rule is explained as one layer with the merged weights (the layer's
rule, run on the layer's input, with the batch norm's output): the canonizer is this handler's choice.

DeepLift: batch norm in eval mode by its gradient (exact); layer, group and RMS norm by the path-averaged Jacobian.
"""
import torch

from .. import rules
from . import linear, reference
from .signatures import bind
from .table import register


class SurrogateGradient(torch.autograd.Function):
    """Forward: value_fn(x). Backward: the vector-Jacobian product of surrogate_fn, which has the same value."""

    @staticmethod
    def forward(ctx, x, value_fn, surrogate_fn):
        ctx.surrogate_fn = surrogate_fn
        ctx.save_for_backward(x)
        return value_fn(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            out = ctx.surrogate_fn(probe)
            (g_in,) = torch.autograd.grad(out, probe, g, create_graph=create_graph)
        return g_in, None, None


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def layer_norm_surrogate(normalized_shape, weight, bias, eps):
    dims = tuple(range(-len(normalized_shape), 0))

    def surrogate(x):
        mean = x.mean(dims, keepdim=True)
        std = (x.var(dims, unbiased=False, keepdim=True) + eps).sqrt().detach()
        y = (x - mean) / std
        return _affine(y, weight, bias, tuple(normalized_shape))

    return surrogate


def rms_norm_surrogate(normalized_shape, weight, eps):
    dims = tuple(range(-len(normalized_shape), 0))

    def surrogate(x):
        rms = (x.pow(2).mean(dims, keepdim=True) + (eps if eps is not None else torch.finfo(x.dtype).eps)).sqrt()
        y = x / rms.detach()
        return _affine(y, weight, None, tuple(normalized_shape))

    return surrogate


def group_norm_surrogate(num_groups, weight, bias, eps):
    def surrogate(x):
        n, c = x.shape[:2]
        grouped = x.reshape(n, num_groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        std = (grouped.var(-1, unbiased=False, keepdim=True) + eps).sqrt().detach()
        y = ((grouped - mean) / std).reshape(x.shape)
        return _affine(y, weight, bias, (1, c) + (1,) * (x.dim() - 2))

    return surrogate


def batch_stats_surrogate(mean, var, weight, bias, eps):
    """Batch norm with given (detached) statistics: an affine map per channel."""

    def surrogate(x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mean.reshape(shape)) / (var.reshape(shape) + eps).sqrt()
        return _affine(y, weight, bias, shape)

    return surrogate


def with_surrogate_gradient(x, value_fn, surrogate_fn):
    return SurrogateGradient.apply(x, value_fn, surrogate_fn)


class LayerNormConstantStd(torch.autograd.Function):
    """Layer norm whose backward treats 1/std as a constant, in closed form from the forward's own statistics:
    y = (x - mean) r w + b gives g_in = r (h - mean(h)) with h = g w, the mean over the normalised dims."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        out, _, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.dims = tuple(range(-len(normalized_shape), 0))
        ctx.save_for_backward(rstd, weight)
        return out

    @staticmethod
    def backward(ctx, g):
        rstd, weight = ctx.saved_tensors
        h = g if weight is None else g * weight
        centred = h - h.mean(ctx.dims, keepdim=True)
        return centred.mul_(rstd) if not centred.requires_grad else centred * rstd, None, None, None, None


def layer_norm(x, normalized_shape, weight, bias, eps):
    return LayerNormConstantStd.apply(x, tuple(normalized_shape), weight, bias, eps)


# ---- LRP handlers -------------------------------------------------------------------------------------------
def _batch_norm_parts(func, args, kwargs):
    """The batch norm's inputs by name, its output (run once, as a plain forward runs it: in train mode the running
    statistics move once), and whether it normalises by batch statistics."""
    bound = bind(("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
                 args, kwargs, {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
    x = bound["input"]
    with torch.no_grad():
        value = func(x.detach(), bound["running_mean"], bound["running_var"], bound["weight"], bound["bias"],
                     bound["training"], bound["momentum"], bound["eps"])
        if bool(bound["training"]) or bound["running_mean"] is None:
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x.detach(), dim=dims, unbiased=False)
        else:
            mean, var = bound["running_mean"], bound["running_var"]
    return bound, value, mean, var


def batch_norm_deeplift(dl, func, name, args, kwargs, active):
    """In eval mode an affine map (its gradient is exact); batch statistics would mix inputs and references."""
    if reference.argument(args, kwargs, 5, "training", False):
        raise ValueError("batch norm uses batch statistics (the model is in training mode), so inputs and "
                         "baselines, which run in one batch, would be normalised together. Call model.eval() first")
    return func(*args, **kwargs)


@register("batch_norm", deeplift=batch_norm_deeplift)
def batch_norm(ctx, func, name, args, kwargs):
    bound = bind(("input", "running_mean", "running_var", "weight", "bias", "training"), args, kwargs,
                 {"weight": None, "bias": None, "training": False})
    if not bool(bound["training"]) and bound["running_mean"] is not None:
        return ctx.plain(func, name, args, kwargs, rule="Gradient (affine)")  # eval mode: an affine map
    bound, value, mean, var = _batch_norm_parts(func, args, kwargs)
    row = ctx.row(name, "Batch statistics as constants")
    surrogate = batch_stats_surrogate(mean, var, bound["weight"], bound["bias"], bound["eps"])
    out = with_surrogate_gradient(ctx.tap(bound["input"], row), lambda t: value, surrogate)
    ctx.watch(out, row)
    return out


def merged_batch_norm(ctx, func, name, args, kwargs):
    """The MergeBatchNorm canonizer's batch-norm handler: a batch norm reading the output of a linear-like op under
    a rule is explained as one layer with it (merged weights, the layer's rule on the layer's input, the batch
    norm's output); any other batch norm as the family's own handler does."""
    x = args[0] if args else kwargs["input"]
    producer = ctx.facts.producer(x)
    if not (producer is not None and isinstance(producer.rule, rules.LinearRule) and not producer.rule.is_gradient
            and producer.site.index >= 0):
        return batch_norm(ctx, func, name, args, kwargs)
    bound, value, mean, var = _batch_norm_parts(func, args, kwargs)
    scale = torch.rsqrt(var + bound["eps"])
    if bound["weight"] is not None:
        scale = bound["weight"] * scale
    shift = -mean * scale
    if bound["bias"] is not None:
        shift = shift + bound["bias"]
    # The op lives on inside the merged layer, which takes over its report row under both modules' names. (The op's
    # own node stays in the graph, unused unless another op reads its output; the merged node reuses the batch
    # norm's value, so nothing is computed twice.)
    weight_key = None  # the merged weight follows the parameters and running statistics, not batch statistics
    if producer.weight_key is not None and not bool(bound["training"]) and bound["running_var"] is not None:
        sources = producer.weight_key[0] + tuple(t for t in (bound["weight"], bound["running_var"]) if t is not None)
        weight_key = (sources, producer.weight_key[1] + ("merged", float(bound["eps"]), bound["weight"] is None))
    out = linear.apply_linear_rule(ctx, func, producer.site.op, (), {}, producer.rule, producer.linear_map,
                                   producer.site, producer.x, producer.weight, producer.bias, output=value,
                                   merge=(scale, shift), row=producer.row, weight_key=weight_key)
    _, bn_name = ctx.where()
    if producer.row is not None and producer.site.name and producer.site.name != bn_name:
        producer.row.module = f"{producer.site.name} + {bn_name}"
    for recorded in producer.recorded:
        # The op's own output no longer carries relevance: the merged layer's output stands for it.
        recorded.watch(out)
    return out


@register("layer_norm", deeplift=reference.path_averaged)
def layer_norm_op(ctx, func, name, args, kwargs):
    bound = bind(("input", "normalized_shape", "weight", "bias", "eps"), args, kwargs,
                  {"weight": None, "bias": None, "eps": 1e-5})
    if ctx.differentiable:  # the surrogate's backward is made of differentiable ops
        surrogate = layer_norm_surrogate(bound["normalized_shape"], bound["weight"], bound["bias"],
                                               bound["eps"])
        return surrogate_norm(ctx, func, name, args, kwargs, bound["input"], surrogate)
    row = ctx.row(name, "Std as constant")
    out = layer_norm(ctx.tap(bound["input"], row), bound["normalized_shape"], bound["weight"],
                           bound["bias"], bound["eps"])
    ctx.watch(out, row)
    return out


@register("group_norm", deeplift=reference.path_averaged)
def group_norm_op(ctx, func, name, args, kwargs):
    bound = bind(("input", "num_groups", "weight", "bias", "eps"), args, kwargs,
                  {"weight": None, "bias": None, "eps": 1e-5})
    surrogate = group_norm_surrogate(bound["num_groups"], bound["weight"], bound["bias"], bound["eps"])
    return surrogate_norm(ctx, func, name, args, kwargs, bound["input"], surrogate)


@register("rms_norm", deeplift=reference.path_averaged)
def rms_norm_op(ctx, func, name, args, kwargs):
    bound = bind(("input", "normalized_shape", "weight", "eps"), args, kwargs, {"weight": None, "eps": None})
    surrogate = rms_norm_surrogate(bound["normalized_shape"], bound["weight"], bound["eps"])
    return surrogate_norm(ctx, func, name, args, kwargs, bound["input"], surrogate)


def surrogate_norm(ctx, func, name, args, kwargs, x, surrogate):
    row = ctx.row(name, "Std as constant")
    rest = args[1:]
    out = with_surrogate_gradient(ctx.tap(x, row), lambda t: func(t, *rest, **kwargs), surrogate)
    ctx.watch(out, row)
    return out
