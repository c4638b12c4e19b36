"""What new users commonly get wrong, recognised so that the error names the fix.

Before a run: compiled models (explained through the module they wrap), token ids for an embedding, one sample
without its batch dimension, tensors made under ``torch.inference_mode()``. After a run: outputs without one entry
per sample. When the model's forward fails: channel count or layout, feature count, dtype and device mismatches;
only what none of these explains is reported as a possible relprop bug.
"""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

_LINEAR_LIKE = (nn.Linear, nn.modules.conv._ConvNd)
_warned_compiled: weakref.WeakSet = weakref.WeakSet()


def model_to_explain(model) -> nn.Module:
    """The model itself, or for a ``torch.compile``d one the module it wraps (saying so once per model)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        if model not in _warned_compiled:
            _warned_compiled.add(model)
            warnings.warn(f"the model is torch.compile'd; relprop explains the original module "
                          f"({type(original).__name__}, model._orig_mod): compiled code cannot be intercepted, and "
                          "the results are the same", stacklevel=3)
        return original
    return model


def first_linear_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the first linear or convolutional module the model registers, None if it has none."""
    return next(((name, module) for name, module in model.named_modules() if isinstance(module, _LINEAR_LIKE)), None)


def embedding_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    return next(((name, module) for name, module in model.named_modules() if isinstance(module, nn.Embedding)), None)


def check_ids(model: nn.Module, x: torch.Tensor):
    """Integer input: token ids for an embedding get the recipe for explaining embeddings, anything else x.float()."""
    found = embedding_layer(model)
    if found is None:
        raise TypeError(f"x has dtype {x.dtype}; relevance needs a floating-point input: pass x.float()")
    raise TypeError(f"x has dtype {x.dtype}: token ids for the model's embedding layer {found[0]!r}. "
                    + _embedding_advice(model, found[0]))


def _embedding_advice(model: nn.Module, name: str) -> str:
    if hasattr(model, "get_input_embeddings"):
        tokens = "relprop.language.explain_tokens(model, ids)"
        recipe = ("relprop.explain(model, model.get_input_embeddings()(ids), forward=lambda model, e: "
                  "model(inputs_embeds=e), output=lambda out: out.logits)")
    else:
        tokens = f"relprop.language.explain_tokens(model, ids, embedding={name!r})"
        recipe = (f"relprop.explain(model, model.get_submodule({name!r})(ids), forward=lambda model, e: <the "
                  f"model's forward from just after {name!r}, applied to e>)")
    return ("Relevance is computed for embeddings, not ids (x.float() does not work either): use "
            f"{tokens} for relevance per token, or explain the embeddings yourself: {recipe}")


def check_inference_tensors(x: torch.Tensor):
    if torch.is_inference_mode_enabled():
        raise RuntimeError("relprop was called inside torch.inference_mode(), where no gradients exist; call it "
                           "outside that block (relprop itself never changes the model)")
    if x.is_inference():
        raise ValueError("x was created under torch.inference_mode() and cannot take part in autograd; pass "
                         "x.clone() made outside inference mode (or create x under torch.no_grad() instead)")


def check_unbatched(model: nn.Module, x: torch.Tensor):
    """One table row without its batch dimension: the first linear layer takes exactly x's length."""
    found = first_linear_layer(model)
    if x.dim() == 1 and found is not None and isinstance(found[1], nn.Linear):
        name, layer = found
        if layer.in_features == x.shape[0] != 1:
            raise ValueError(f"x has shape {tuple(x.shape)}: one sample of {x.shape[0]} features, without the batch "
                             f"dimension (the model's first linear layer {name!r} takes {layer.in_features} "
                             "features per sample). Add the batch dimension with x.unsqueeze(0).")


def check_output_batch(output: torch.Tensor, batch: int):
    """Outputs need one entry per sample along the first dimension: a total over the batch cannot be split up."""
    if output.dim() == 0 and batch == 1:
        return
    if output.dim() == 0:
        raise ValueError(f"the model's output is one value (shape ()) for a batch of {batch} samples: it reduces "
                         "over the batch (e.g. returns model(x).sum()), so per-sample results would all be measured "
                         "against one shared total. Return one output per sample (sum over dims 1.. only, e.g. "
                         "out.flatten(1).sum(1)), or explain one sample at a time.")
    if output.shape[0] != batch:
        raise ValueError(f"the model's output has shape {tuple(output.shape)}, but x is a batch of {batch} samples: "
                         "relprop needs one output per sample along the first dimension. If x is a single sample, "
                         "add the batch dimension with x.unsqueeze(0); if the model mixes samples or reshapes "
                         "across the batch, return per-sample outputs (output=... picks the tensor to explain).")


def forward_failure(model: nn.Module, x: torch.Tensor, error: Exception) -> ValueError:
    """A ValueError for the model's forward failing on x: the likely user error and its fix, or a bug report."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    fix = _likely_fix(model, x, str(error))
    if fix is None:
        fix = ("Check that x is a batch (first dimension) shaped and typed as the model expects; if it is and the "
               "model runs on x outside relprop, please report this as a relprop bug.")
    return ValueError(f"the model's forward failed on an input of shape {tuple(x.shape)} and dtype {x.dtype}: "
                      f"{first_line}. {fix}")


def _likely_fix(model: nn.Module, x: torch.Tensor, message: str) -> str | None:
    parameters = [p for p in model.parameters()]
    if any(p.is_inference() for p in parameters):
        return ("The model's parameters were created under torch.inference_mode(); build or load the model outside "
                "it (torch.no_grad() is fine).")
    floating = {p.dtype for p in parameters if p.is_floating_point()}
    if len(floating) == 1 and x.dtype not in floating:
        dtype = floating.pop()
        return (f"x has dtype {x.dtype} but the model's parameters are {dtype}: pass x.to({dtype}) (or convert the "
                f"model with model.to({x.dtype})).")
    devices = {p.device for p in parameters}
    if len(devices) == 1 and x.device not in devices:
        device = devices.pop()
        return f"x is on {x.device} but the model's parameters are on {device}: pass x.to('{device}')."
    embedding = embedding_layer(model)
    if embedding is not None and "indices" in message and x.is_floating_point():
        return f"x holds floats, but the model starts from token ids for its embedding layer {embedding[0]!r}. " + \
            _embedding_advice(model, embedding[0])
    found = first_linear_layer(model)
    if found is None:
        return None
    name, layer = found
    if isinstance(layer, nn.modules.conv._ConvNd) and "channels" in message:
        dims = len(layer.kernel_size)
        channels = layer.in_channels
        if x.dim() == dims + 2 and x.shape[1] != channels:
            if x.shape[-1] == channels:
                order = ", ".join(["N"] + ["spatial"] * dims + ["C"])
                return (f"x looks channels-last ({order}) but the model's first convolution {name!r} takes "
                        f"channels first: pass x.movedim(-1, 1) (for images x.permute(0, 3, 1, 2)).")
            return (f"the model's first convolution {name!r} takes {channels} channels but x has {x.shape[1]} "
                    f"along dimension 1; give x {channels} channels (e.g. grey to RGB with x.expand(-1, 3, ...)).")
    if isinstance(layer, nn.Linear) and ("shape" in message or "size" in message) and x.dim() >= 1:
        features = layer.in_features
        per_sample = x[0].numel() if x.dim() > 1 else 1
        if x.shape[-1] != features and per_sample != features:
            return (f"the model's first linear layer {name!r} takes {features} features but x's samples have "
                    f"{x.shape[-1]}; give x the shape (batch, {features}).")
    return None
