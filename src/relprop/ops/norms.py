"""Normalisation layers: the standard deviation (and batch statistics) treated as constants.

Layer, group, instance and RMS norm are homogeneous of degree 0 in their input, so their plain gradient x input
sums to zero. Taking 1/std as a constant makes them linear maps, and relevance then passes through (minus what the
affine bias absorbs). The forward value is the library's own op, bit for bit; only the backward differs.
"""
import torch


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
