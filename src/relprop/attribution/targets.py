"""What every attribution method checks before and after running the model, and how a target becomes the gradient
at the output.

Every method (LRP, the gradients, DeepLift, occlusion) and the evaluation runner take the same inputs and targets,
so they refuse the same mistakes with the same messages, each naming its fix: ``check_input`` (a batch of finite
values the model can take), ``check_target_type`` (what a target may be, numpy values converted), ``tensor_output``
(the model's output, or what ``output=`` picked from it, must be a tensor).

``output_gradient`` reads a target as one linear function of the output: relevance at the output is ``output * g``
with

    g = one-hot of the class (per sample, or per location for outputs such as segmentation maps)   a class target
    g = relevance / output  (0 where output = 0)            an output-shaped float tensor or a callable's result
    g = mask                                                 an output-shaped bool tensor
    g = 1                                                    target None for an output without a class dimension

so that ``(output * g).sum()`` is what every method explains, and the methods that evaluate the model at other
points (noisy copies, path points, occluded inputs) read those outputs through the same g.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .. import diagnose
from ..stabilize import divide_or_zero

def check_input(model, x):
    """Refuse an input the model cannot be explained on, naming the fix.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        x: The input batch, samples first.

    Raises:
        TypeError: for an x that is not a tensor, or token ids for a model that embeds them.
        ValueError: for a scalar, an empty batch, NaN or infinite values, a missing batch dimension, or a shape the
            convolutions do not take.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}; convert it with "
                        "torch.as_tensor(x, dtype=torch.float32)")
    if not x.is_floating_point():
        diagnose.check_ids(model, x)
    if x.dim() == 0:
        raise ValueError("x is a scalar; pass a batch with the samples along the first dimension")
    diagnose.check_inference_tensors(x)
    diagnose.check_unbatched(model, x)
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x contains {bad} NaN or infinite values; clean the input first (e.g. torch.nan_to_num)")
    conv_dims = {len(module.kernel_size) for module in model.modules()
                 if isinstance(module, torch.nn.modules.conv._ConvNd)}
    if len(conv_dims) == 1:
        dims = conv_dims.pop()
        if x.dim() != dims + 2:
            hint = " Add the batch dimension with x.unsqueeze(0)." if x.dim() == dims + 1 else ""
            raise ValueError(f"x has shape {tuple(x.shape)} ({x.dim()} dims) but the model's {dims}d convolutions "
                             f"expect a batch of {dims + 2} dims (N, C{', spatial' * dims}).{hint}")


TARGETS = ("None (the predicted class; per location for outputs such as segmentation maps), a class int, one "
           "class int per sample, a bool mask or float tensor shaped like the output, or a callable(output) -> "
           "output relevance")


def check_target_type(target):
    """The target as relprop takes it: numpy integers and arrays become ints and tensors; anything else refused.

    Args:
        target: What to explain: None (the predicted class; per location for outputs such as segmentation maps), a
            class int, one class int per sample, a bool mask or float tensor shaped like the output (the output
            relevance), or a callable(output) -> output relevance.

    Returns:
        An int, a list of ints, a tensor, a callable or None.

    Raises:
        TypeError: for a target of another type.
    """
    if isinstance(target, np.ndarray):
        if target.dtype.kind not in "iubf":
            raise TypeError(f"a numpy target must hold class indices or output relevance, got dtype {target.dtype}")
        target = torch.from_numpy(target)
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target must be a class index, not a bool")
    if isinstance(target, numbers.Integral):
        return int(target)
    if target is None or callable(target) or isinstance(target, torch.Tensor):
        return target
    if isinstance(target, (list, tuple)) and all(isinstance(t, numbers.Integral) and not isinstance(t, (bool, np.bool_))
                                                 for t in target):
        return [int(t) for t in target]
    if isinstance(target, (list, tuple)):  # nested lists (a column, a class map) are read as a tensor of indices
        try:
            nested = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError):
            nested = None
        if nested is not None and nested.dim() > 1 and not nested.is_floating_point() and nested.dtype != torch.bool:
            return nested
    raise TypeError(f"target must be {TARGETS}; got {type(target).__name__}")


def tensor_output(output, picks: str = "the tensor to explain") -> torch.Tensor:
    """The model's output when it is a tensor; anything else (a tuple, dict or model-output object) is refused with
    the fix, ``output=``.

    Args:
        output: What the model returned (after ``output=``, where given).
        picks: What ``output=`` should pick, as the message says it ("the tensor to explain", "the class scores").

    Returns:
        output.

    Raises:
        TypeError: when output is not a tensor.
    """
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}, not a tensor; pass output=... to pick {picks}, "
                        "e.g. output=lambda out: out.logits or output=lambda out: out[0]")
    return output


def output_gradient(output, target):
    """g at the output (relevance = output * g) for a target, and the class indices when the target names classes.

    Args:
        output: The model's output.
        target: What to explain: None (the predicted class; per location for outputs such as segmentation maps), a
            class int, one class int per sample, a bool mask or float tensor shaped like the output (the output
            relevance), or a callable(output) -> output relevance.

    Returns:
        A pair (g shaped like output, class indices or None).

    Raises:
        ValueError: for a target that does not fit the output.
    """
    batch = output.shape[0] if output.dim() else 1
    if callable(target) and not isinstance(target, torch.Tensor):
        relevance = target(output)
        if not isinstance(relevance, torch.Tensor) or relevance.shape != output.shape:
            shape = getattr(relevance, "shape", type(relevance).__name__)
            raise ValueError(f"target callable must return a tensor shaped like the output {tuple(output.shape)}, "
                             f"got {shape}")
        return divide_or_zero(relevance.to(output.dtype), output), None
    if isinstance(target, torch.Tensor) and target.dim() > 0 and target.shape == output.shape and (
            target.is_floating_point() or target.dtype == torch.bool):
        if target.dtype == torch.bool:
            return target.to(output.dtype), None
        return divide_or_zero(target.to(output.dtype), output), None
    if output.dim() < 2:
        if target is None:
            return torch.ones_like(output), None
        raise ValueError(f"the output has shape {tuple(output.shape)} (no class dimension), so a class target does "
                         "not apply; use target=None to explain the output itself")
    classes = output.shape[1]
    locations = (batch,) + tuple(output.shape[2:])  # per-location outputs (segmentation): a class per location
    if target is None:
        index = output.argmax(1)  # the predicted class, per location where the output has locations
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"a {'bool' if target.dtype == torch.bool else 'float'} target tensor must be shaped "
                             f"like the output {tuple(output.shape)}, got shape {tuple(target.shape)}; a target "
                             f"is {TARGETS}")
        index = target.to(output.device).long()
    else:
        index = torch.as_tensor(target, device=output.device, dtype=torch.long)
    if index.dim() == 0:
        index = index.expand(batch)
    shape = tuple(index.shape)
    if shape not in ((batch,), locations):
        maps = f", or a class map shaped {locations}" if len(locations) > 1 else ""
        column = " (a column: flatten it with target.flatten())" if shape == (batch, 1) else ""
        given = f"{shape[0]} class indices" if len(shape) == 1 else f"shape {shape}{column}"
        raise ValueError(f"target has {given} for a batch of {batch} (output {tuple(output.shape)}): give one "
                         f"class int for all samples, one per sample (shape ({batch},)){maps}, a bool mask or float "
                         "tensor shaped like the output, or a callable")
    if bool(((index < 0) | (index >= classes)).any()):
        wrong = index[(index < 0) | (index >= classes)].unique().tolist()
        raise ValueError(f"target {wrong} out of range: the output has {classes} classes "
                         f"(0..{classes - 1})")
    g = torch.zeros_like(output)
    if index.dim() == 1 and output.dim() == 2:
        g[torch.arange(batch, device=output.device), index] = 1
    else:  # one class per sample selects that channel at every location, a class map one channel per location
        per_location = index if index.dim() > 1 else index.reshape((batch,) + (1,) * (output.dim() - 2))
        g.scatter_(1, per_location.expand(locations).unsqueeze(1), 1)
    return g, index
