"""What each torch function is, for relevance: the map from op name to op family, and the table of families.

Each family lives in one file of ``relprop.ops`` that registers it here with ``@register(family, deeplift=...)``:
its LRP handler ``handler(ctx, func, name, args, kwargs) -> output`` (``ctx`` is the session's narrow
``engine.session.OpContext``) and how DeepLift treats it. The LRP session, DeepLift and the modified-gradient
methods all read this table. Adding a family (recurrent, graph aggregation, ...) is one new file: name its torch
functions in ``FAMILIES`` (or ``FAMILIES.update`` from the new file), register a handler, import the file in
``ops/__init__.py``.

Families:
  gradient    exact under gradient x input: linear and homogeneous (sums, means, pooling, padding, interpolation,
              shape and index ops), piecewise linear through zero (ReLU, LeakyReLU), selections (max-pool, max),
              and softmax (its gradient x input is the AttnLRP softmax rule)
  activation  element-wise nonlinearity: relevance passes through unchanged
  product     product of activations (split uniformly) or with a constant (gradient)
  divide      division: gradient by a constant, unsupported by an activation
  linear / conv / conv_transpose   linear-like layers, ruled by the composite
  avg_pool    gradient by default, a linear map per channel when the composite gives it a rule
  batch_norm / layer_norm / group_norm / rms_norm   normalisation (std as constant)
  softmax     gradient (AttnLRP), or a constant (CP-LRP), as the composite says; remembered for the output policy
  attention / multi_head_attention   fused attention, run as its decomposition into the ops above
  graph_aggregation / graph_softmax  message passing: scatter/index/segment sums, means and max; PyG's edge softmax
Anything else that touches relevance is reported as unsupported (LRP) or averaged along the path with a warning
(DeepLift).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

T = "torch.Tensor."
F = "torch.nn.functional."

_SHAPE = [
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "transpose_", "t",
    "contiguous", "clone", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "expand", "expand_as", "repeat",
    "repeat_interleave", "flip", "roll", "movedim", "moveaxis", "swapaxes", "swapdims", "narrow", "select",
    "index_select", "gather", "chunk", "split", "tensor_split", "unbind", "__getitem__", "__setitem__", "copy_",
    "masked_fill", "masked_fill_", "diagonal", "tril", "triu", "unfold", "as_strided", "take_along_dim",
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda", "detach", "requires_grad_",
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "where", "broadcast_to",
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__", "subtract",
    "neg", "neg_", "negative", "__neg__", "__pos__", "positive", "sum", "mean", "nansum", "cumsum", "relu", "relu_",
    "max", "amax", "min", "amin", "sort", "topk", "cummax", "abs",
]
_F_GRADIENT = [
    "relu", "relu_", "leaky_relu", "leaky_relu_", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices", "pad", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle",
    "pixel_unshuffle", "unfold", "fold", "embedding", "channel_shuffle", "feature_alpha_dropout",
]
_ACTIVATIONS = [
    "gelu", "silu", "elu", "elu_", "selu", "selu_", "celu", "celu_", "softplus", "hardswish", "hardsigmoid",
    "hardtanh", "hardtanh_", "relu6", "mish", "tanh", "sigmoid", "logsigmoid", "softsign", "tanhshrink",
    "hardshrink", "softshrink", "rrelu",
]
_TENSOR_ACTIVATIONS = ["tanh", "tanh_", "sigmoid", "sigmoid_", "erf", "clamp", "clamp_", "clip", "clip_"]
_PRODUCTS = ["mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "matmul", "__matmul__", "__rmatmul__",
             "mm", "bmm", "einsum", "outer", "inner", "dot", "tensordot", "baddbmm", "addmm", "addcmul", "prod"]
_DIVIDE = ["div", "div_", "__truediv__", "__rtruediv__", "__itruediv__", "divide", "true_divide"]

FAMILIES: dict[str, str] = {}
for _name in _SHAPE:
    FAMILIES[T + _name] = "gradient"
    FAMILIES["torch." + _name] = "gradient"
for _name in _F_GRADIENT:
    FAMILIES[F + _name] = "gradient"
    FAMILIES["torch." + _name] = "gradient"
for _name in _ACTIVATIONS:
    FAMILIES[F + _name] = "activation"
for _name in _TENSOR_ACTIVATIONS:
    FAMILIES[T + _name] = "activation"
    FAMILIES["torch." + _name] = "activation"
for _name in _PRODUCTS:
    FAMILIES[T + _name] = "product"
    FAMILIES["torch." + _name] = "product"
for _name in _DIVIDE:
    FAMILIES[T + _name] = "divide"
    FAMILIES["torch." + _name] = "divide"
FAMILIES.update({
    "torch.functional.einsum": "product", "torch.functional.tensordot": "product",
    "torch.functional.split": "gradient", "torch.functional.unique": "gradient",
    F + "linear": "linear",
    F + "conv1d": "conv", F + "conv2d": "conv", F + "conv3d": "conv",
    F + "conv_transpose1d": "conv_transpose", F + "conv_transpose2d": "conv_transpose",
    F + "conv_transpose3d": "conv_transpose",
    F + "avg_pool1d": "avg_pool", F + "avg_pool2d": "avg_pool", F + "avg_pool3d": "avg_pool",
    F + "adaptive_avg_pool1d": "avg_pool", F + "adaptive_avg_pool2d": "avg_pool", F + "adaptive_avg_pool3d": "avg_pool",
    F + "batch_norm": "batch_norm", F + "layer_norm": "layer_norm", F + "group_norm": "group_norm",
    F + "rms_norm": "rms_norm",
    F + "softmax": "softmax", T + "softmax": "softmax", "torch.softmax": "softmax",
    F + "scaled_dot_product_attention": "attention",
    F + "multi_head_attention_forward": "multi_head_attention",
    F + "log_softmax": "log_softmax", T + "log_softmax": "log_softmax", "torch.log_softmax": "log_softmax",
})
# Tensor methods whose result carries no relevance (metadata, comparisons) need no check at all.
QUIET = {T + "size", T + "dim", T + "numel", T + "shape.__get__", T + "dtype.__get__", T + "device.__get__",
         T + "ndim.__get__", T + "is_contiguous", T + "stride", T + "storage_offset", T + "data_ptr",
         T + "requires_grad.__get__", T + "grad_fn.__get__", T + "__len__", T + "__iter__", T + "item",
         T + "tolist", T + "numpy", T + "element_size", T + "is_floating_point", T + "__format__", T + "__repr__",
         T + "_is_view", T + "_base.__get__", T + "is_leaf.__get__", T + "register_hook", T + "retain_grad",
         T + "grad.__get__", T + "names.__get__", T + "layout.__get__", T + "is_cuda.__get__",
         T + "data.__get__", T + "__hash__", T + "__bool__", T + "__index__", T + "__int__", T + "__float__",
         T + "__eq__", T + "__ne__", T + "__lt__", T + "__le__", T + "__gt__", T + "__ge__", T + "argmax",
         T + "argmin", "torch.argmax", "torch.argmin", T + "get_device", T + "untyped_storage", T + "__reduce_ex__",
         T + "__deepcopy__", T + "__array__", T + "new_zeros", T + "new_ones", T + "new_empty", T + "new_full",
         T + "new_tensor", T + "T.__get__", T + "mT.__get__", T + "H.__get__", T + "mH.__get__",
         T + "__contains__", T + "is_complex", T + "output_nr.__get__", T + "_version.__get__"}
for _name in ("T.__get__", "mT.__get__"):
    FAMILIES[T + _name] = "gradient"
    QUIET.discard(T + _name)



def is_inplace(name: str) -> bool:
    """Whether a torch function of this name writes into its first argument."""
    short = name.rsplit(".", 1)[-1]
    return ((short.endswith("_") and not short.endswith("__")) or short == "__setitem__"
            or (short.startswith("__i") and short not in ("__init__", "__iter__", "__index__", "__int__")))


# How DeepLift treats a family: "linear" (the gradient is exact), "path" (the Jacobian averaged along the path from
# baseline to input), "elementwise" (Rescale), "product" (midpoint for two activations, else linear), "divide"
# (linear by a constant, path by an activation), "attention" (run as its parts).
DEEPLIFT_KINDS = ("linear", "path", "elementwise", "product", "divide", "attention")


@dataclass(frozen=True)
class Family:
    name: str
    lrp: Callable  # handler(ctx, func, name, args, kwargs) -> the op's output, with the family's rule in its backward
    deeplift: str


HANDLERS: dict[str, Family] = {}


def register(*families: str, deeplift: str):
    """Decorator: the LRP handler of one or more families, and how DeepLift treats them."""
    if deeplift not in DEEPLIFT_KINDS:
        raise ValueError(f"deeplift must be one of {DEEPLIFT_KINDS}, got {deeplift!r}")

    def decorate(handler):
        for family in families:
            HANDLERS[family] = Family(family, handler, deeplift)
        return handler

    return decorate


def deeplift_kind(family: str | None) -> str | None:
    """How DeepLift treats a family, None for an op no family claims."""
    entry = HANDLERS.get(family)
    return entry.deeplift if entry is not None else None
