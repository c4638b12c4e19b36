"""What each torch function is, for relevance: the map from op name to op family, and the table of families.

Each family lives in one file of ``relprop.ops`` that registers it here with ``@register(family, deeplift=...)``:
its LRP handler ``handler(ctx, func, name, args, kwargs) -> output`` (``ctx`` is the session's narrow
``engine.session.OpContext``) and how DeepLift treats it. The LRP session, DeepLift and the modified-gradient
methods all read this table. Adding a family (recurrent, graph aggregation, ...) is one new file: name its torch
functions in ``FAMILIES`` (``claim(family, names)`` from the new file), register a handler, import the file in
``ops/__init__.py``.

Families:
  gradient    exact under gradient x input: linear and homogeneous (sums, means, pooling, padding, interpolation,
              shape and index ops)
  rectifier   ReLU, LeakyReLU, abs: piecewise linear through zero, so their gradient x input is exact too; what
              guided backprop and deconvnet change
  selection   max, min, sort, top-k: the winner takes all (their gradient)
  max_pool    max-pooling: the winner takes all, or the window rule the composite maps to it (ops/pooling.py)
  activation  element-wise nonlinearity: relevance passes through unchanged
  pointwise   other element-wise maths (exp, log, sqrt, pow, ...): no LRP rule (reported), DeepLift's Rescale
  product     product of activations (split uniformly) or with a constant (gradient)
  divide      division: gradient by a constant, unsupported by an activation
  linear / conv / conv_transpose   linear-like layers, ruled by the composite
  avg_pool    gradient by default, a linear map per channel when the composite gives it a rule
  batch_norm / layer_norm / group_norm / rms_norm   normalisation (std as constant)
  softmax     gradient (AttnLRP), or a constant (CP-LRP), as the composite says; remembered for the output policy
  attention / multi_head_attention   fused attention, run as its decomposition into the ops above
  recurrent   LSTM / GRU / RNN layers and cells, run as their time steps (ops/recurrent.py, FAMILIES.update there)
  graph_aggregation / graph_softmax  message passing: scatter/index/segment sums, means and max; PyG's edge softmax
Anything else that touches relevance is reported as unsupported (LRP) or averaged along the path with a warning
(DeepLift): the table is an allow-list.
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
    "neg", "neg_", "negative", "__neg__", "__pos__", "positive", "sum", "mean", "nansum", "cumsum",
]
_RECTIFIERS = ["relu", "relu_", "leaky_relu", "leaky_relu_", "abs", "abs_"]
_SELECTIONS = ["max", "amax", "min", "amin", "sort", "topk", "cummax"]
_MAX_POOLS = [
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices",
]
_POINTWISE = ["exp", "exp_", "log", "log_", "log1p", "expm1", "sqrt", "rsqrt", "square", "sin", "cos",
              "reciprocal", "erfc", "clamp_min", "clamp_max", "pow", "pow_", "__pow__", "__ipow__"]
_F_GRADIENT = [
    "pad", "dropout", "dropout1d",
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
             "mm", "bmm", "einsum", "outer", "inner", "dot", "tensordot", "baddbmm", "addmm", "addcmul", "addcmul_",
             "prod"]
_DIVIDE = ["div", "div_", "__truediv__", "__rtruediv__", "__itruediv__", "divide", "true_divide"]

FAMILIES: dict[str, str] = {}


def claim(family: str, names, prefixes=(T, "torch.")):
    """Name torch functions as a family's: each short name under each prefix (a family file may add its own)."""
    for short in names:
        for prefix in prefixes:
            FAMILIES[prefix + short] = family


claim("gradient", _SHAPE)
claim("gradient", _F_GRADIENT, (F, "torch."))
claim("rectifier", _RECTIFIERS, (T, F, "torch."))
claim("selection", _SELECTIONS)
claim("max_pool", _MAX_POOLS, (F, "torch."))
claim("pointwise", _POINTWISE)
claim("pointwise", ["threshold", "threshold_"], (F,))
claim("activation", _ACTIVATIONS, (F,))
claim("activation", _TENSOR_ACTIVATIONS)
claim("product", _PRODUCTS)
claim("divide", _DIVIDE)
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


RECTIFIERS = frozenset(name for name, family in FAMILIES.items() if family == "rectifier"
                       and name.rsplit(".", 1)[-1] in ("relu", "relu_"))  # ReLU itself: guided backprop's op
# families whose ops say whether their outputs are >= 0
SIGN_KNOWN = ("gradient", "rectifier", "selection", "max_pool", "avg_pool")


@dataclass(frozen=True)
class Family:
    name: str
    lrp: Callable  # handler(ctx, func, name, args, kwargs) -> the op's output, with the family's rule in its backward
    deeplift: Callable  # handler(dl, func, name, args, kwargs, active) -> the output, with DeepLift's multiplier


HANDLERS: dict[str, Family] = {}


def register(*families: str, deeplift: Callable):
    """Decorator: the LRP handler of one or more families, with their DeepLift handler (see ops/reference.py)."""
    if not callable(deeplift):
        raise TypeError(f"deeplift must be a DeepLift handler(dl, func, name, args, kwargs, active), got "
                        f"{deeplift!r}")

    def decorate(handler):
        for family in families:
            HANDLERS[family] = Family(family, handler, deeplift)
        return handler

    return decorate


# Module types whose relevance is given for the module as a whole (relprop.neuralize's): handler(ctx, module, x)
# returns None (run the module's ops as usual) or finish(output) -> the output with the rule in its backward, and
# the module's own ops then run unintercepted.
MODULES: dict[type, Callable] = {}


def register_module(*module_types: type):
    """Decorator: the handler that rules a module type as a whole (see MODULES)."""

    def decorate(handler):
        for module_type in module_types:
            MODULES[module_type] = handler
        return handler

    return decorate


def module_handler(module) -> Callable | None:
    return MODULES.get(type(module))


def deeplift_handler(family: str | None) -> Callable | None:
    """The DeepLift handler of a family, None for an op no family claims."""
    entry = HANDLERS.get(family)
    return entry.deeplift if entry is not None else None
