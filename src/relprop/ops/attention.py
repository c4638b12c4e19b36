"""Attention written out in plain ops, so that each gets its rule while explaining.

Fused kernels (``F.scaled_dot_product_attention``) and ``F.multi_head_attention_forward`` arrive as one op; the
engine runs these decompositions instead, under interception: the two matrix products become products of
activations (AttnLRP's uniform rule), the softmax gets the composite's softmax rule, projections get the linear
rules. Values agree with the fused kernels to float rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import reference
from .products import scale_gradient
from .signatures import bind
from .table import register


def scaled_dot_product(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False):
    """softmax(q k^T * scale + mask) v, with the semantics of F.scaled_dot_product_attention."""
    length, source = query.shape[-2], key.shape[-2]
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query * scale, key.transpose(-2, -1))  # scaling q costs less than scaling the scores
    if is_causal:
        allowed = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:  # True means "may attend"
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, value)


MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
            "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
            "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
            "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")
MHA_DEFAULTS = {"training": True, "key_padding_mask": None, "need_weights": True, "attn_mask": None,
                "use_separate_proj_weight": False, "q_proj_weight": None, "k_proj_weight": None,
                "v_proj_weight": None, "static_k": None, "static_v": None, "average_attn_weights": True,
                "is_causal": False}


def multi_head_supported(arguments: dict) -> str | None:
    """Why the decomposition below cannot run this call, or None if it can."""
    for name in ("bias_k", "bias_v", "static_k", "static_v"):
        if arguments[name] is not None:
            return f"{name} is not supported"
    if arguments["add_zero_attn"]:
        return "add_zero_attn is not supported"
    return None


def _as_additive(mask, dtype):
    """A multi-head attention mask (bool: True = masked out, or additive float) as an additive float mask."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def multi_head(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
               add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
               need_weights=True, attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None,
               k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
               is_causal=False):
    """F.multi_head_attention_forward for inputs shaped (L, N, E) or (L, E), without bias_k/v or zero attention."""
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    length, batch, embed = query.shape
    source = key.shape[0]
    head = embed // num_heads
    if use_separate_proj_weight:
        biases = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        q = F.linear(query, q_proj_weight, biases[0])
        k = F.linear(key, k_proj_weight, biases[1])
        v = F.linear(value, v_proj_weight, biases[2])
    else:
        weights = in_proj_weight.chunk(3)
        biases = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        q = F.linear(query, weights[0], biases[0])
        k = F.linear(key, weights[1], biases[1])
        v = F.linear(value, weights[2], biases[2])
    # (L, N, E) -> (N, heads, L, head)
    q = q.reshape(length, batch, num_heads, head).permute(1, 2, 0, 3)
    k = k.reshape(source, batch, num_heads, head).permute(1, 2, 0, 3)
    v = v.reshape(source, batch, num_heads, head).permute(1, 2, 0, 3)
    mask = _as_additive(attn_mask, q.dtype)
    if mask is not None:
        mask = mask.reshape(batch, num_heads, length, source) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        padding = _as_additive(key_padding_mask, q.dtype).reshape(batch, 1, 1, source)
        mask = padding if mask is None else mask + padding
    if is_causal and mask is None:
        allowed = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        mask = _as_additive(~allowed, q.dtype)
    scores = torch.matmul(q * (1.0 / math.sqrt(head)), k.transpose(-2, -1))
    if mask is not None:
        scores = scores + mask
    attention = torch.softmax(scores, dim=-1)
    if training and dropout_p > 0:
        attention = F.dropout(attention, dropout_p)
    out = torch.matmul(attention, v)  # (N, heads, L, head)
    out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    returned = attention.mean(1) if average_attn_weights else attention
    if not batched:
        out = out.squeeze(1)
        returned = returned.squeeze(0)
    return out, (returned if need_weights else None)


# ---- DeepLift handlers: softmax by the path-averaged Jacobian, fused attention as its parts -----------------------
def softmax_deeplift(dl, func, name, args, kwargs, active):
    out = reference.path_averaged(dl, func, name, args, kwargs, active)
    if isinstance(out, torch.Tensor):
        dl.remember_softmax(out, args[0] if args else kwargs.get("input"))  # explain_logits looks it up
    return out


def fused_attention_deeplift(dl, func, name, args, kwargs, active):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    with dl.intercept():  # its products and softmax get their own multipliers
        return scaled_dot_product(**dict(zip(names, args)), **kwargs)


def multi_head_attention_deeplift(dl, func, name, args, kwargs, active):
    bound = dict(zip(MHA_ARGS, args), **kwargs)
    for key, value in MHA_DEFAULTS.items():
        bound.setdefault(key, value)
    why = multi_head_supported(bound)
    if why is not None:
        return dl.fallback(func, name, args, kwargs, why)
    with dl.intercept():
        return multi_head(**bound)


# ---- LRP handlers -------------------------------------------------------------------------------------------
@register("softmax", deeplift=softmax_deeplift)
def softmax_op(ctx, func, name, args, kwargs):
    if ctx.composite.softmax == "constant":
        # CP-LRP: attention weights are constants, so relevance flows through the values only.
        row = ctx.row(name, "Constant (CP-LRP)")
        out = func(*args, **kwargs).detach()
        if row is not None:
            row.backward_seen = True
        return out
    return _by_gradient(ctx, func, name, args, kwargs, "Gradient (AttnLRP softmax)")


@register("log_softmax", deeplift=softmax_deeplift)
def log_softmax_op(ctx, func, name, args, kwargs):
    return _by_gradient(ctx, func, name, args, kwargs, "Gradient (log-softmax)")


def _by_gradient(ctx, func, name, args, kwargs, rule):
    """A softmax by its gradient, remembering its input: at the model output the logits are explained instead."""
    out = ctx.plain(func, name, args, kwargs, rule=rule)
    if isinstance(out, torch.Tensor):
        ctx.facts.set_softmax_source(out, args[0])
    return out


@register("attention", deeplift=fused_attention_deeplift)
def fused_attention(ctx, func, name, args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = bind(names, args, kwargs, {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                                        "enable_gqa": False})
    if ctx.reporting or ctx.active(bound["attn_mask"]):
        with ctx.intercept():  # report mode: the decomposition's ops are ruled, and listed, one by one
            return scaled_dot_product(**bound)
    # The fused kernel, its gradient rescaled: with softmax by its gradient (AttnLRP) and both products split
    # uniformly, v gets 1/2 of the gradient and q, k 1/4 (1/2 through attn @ v, 1/2 through q @ k^T); with
    # constant attention weights (CP-LRP) v gets all of it and q, k nothing. No attention matrix is stored.
    q, k, v = bound["query"], bound["key"], bound["value"]
    scores_active = ctx.active(q) or ctx.active(k)
    if ctx.composite.softmax == "constant":
        q, k, scores_active = q.detach(), k.detach(), False
    v_share = 0.5 if (scores_active and ctx.active(v)) else 1.0
    qk_share = v_share * (0.5 if (ctx.active(q) and ctx.active(k)) else 1.0)
    scaled = {"query": q, "key": k, "value": v}
    for key, share in (("query", qk_share), ("key", qk_share), ("value", v_share)):
        if ctx.active(scaled[key]) and share != 1.0:
            scaled[key] = scale_gradient(scaled[key], share)
    bound.update(scaled)
    return func(**bound)


@register("multi_head_attention", deeplift=multi_head_attention_deeplift)
def multi_head_attention(ctx, func, name, args, kwargs):
    bound = bind(MHA_ARGS, args, kwargs, MHA_DEFAULTS)
    why = multi_head_supported(bound)
    if why is not None:
        return ctx.unknown(func, f"{name} ({why})", args, kwargs)
    with ctx.intercept():
        return multi_head(**bound)
