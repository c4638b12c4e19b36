"""Message-passing aggregation of graph networks (PyTorch Geometric and hand-written ones), and GAT's edge softmax.

Aggregation scatters messages m_e onto their target nodes: y_i = sum_{e: t(e)=i} m_e (``scatter_add``,
``index_add``, ``scatter_reduce`` "sum", ``segment_reduce`` "sum", ``torch.sparse.mm`` by a constant adjacency),
the mean y_i = (1/n_i) sum m_e (n_i counted from the graph, a constant), or the maximum y_i = max m_e. Sums and means are linear, so gradient x input is exact LRP:
R(m_e) = m_e / y_i * R(y_i) per feature, and relevance is conserved per target node. The maximum passes all of R(y_i)
to the winning message (ties share it), which is again the gradient: y_i = m_winner.

Attention over edges (``torch_geometric.utils.softmax``: a = exp(s_e - max) / sum_{e' into i} exp(s_e' - max)) is
a softmax per target node. Its exp and its division by the per-node sum are ruled together as the composite's
softmax rule: by their gradient (AttnLRP; the chain of both is exactly the softmax's gradient) or, for CP-LRP, as
constants. Outside that function exp and division by an activation stay unsupported.

Products with ``reduce="prod"`` and ``index_reduce`` have no rule: they are reported as unsupported.
"""
from __future__ import annotations

import sys

from . import elementwise, reference
from .products import denominator
from .table import FAMILIES, HANDLERS, T, claim, register

_AGGREGATIONS = ("scatter_add", "scatter_add_", "index_add", "index_add_", "scatter_reduce", "scatter_reduce_",
                 "segment_reduce", "_segment_reduce")
# "_VariableFunctionsClass.": how torch.segment_reduce resolves
claim("graph_aggregation", _AGGREGATIONS, (T, "torch.", "_VariableFunctionsClass."))
FAMILIES["_sparse_mm"] = "graph_aggregation"  # torch.sparse.mm(adjacency, x, reduce): PyG's SparseTensor/CSR path
claim("graph_softmax", ("exp", "exp_"))

# reduce argument -> rule name in the report; any other reduction has no rule
RULES = {"sum": "Gradient (sum aggregation)", "mean": "Gradient (mean aggregation)",
         "amax": "Gradient (max aggregation, winner takes all)", "max": "Gradient (max aggregation, winner takes all)",
         "amin": "Gradient (min aggregation, winner takes all)", "min": "Gradient (min aggregation, winner takes all)"}
_SOFTMAX_MODULE = "torch_geometric.utils"
_SOFTMAX_DEPTH = 6  # frames between the op and torch_geometric.utils.softmax: the interceptor's and the handler's


def reduction(name: str, args, kwargs) -> str:
    """The reduction an aggregation op applies ("sum" for scatter_add and index_add)."""
    short = name.rsplit(".", 1)[-1].strip("_")
    if short in ("scatter_add", "index_add"):
        return "sum"
    if short == "sparse_mm":
        return kwargs.get("reduce", args[2] if len(args) > 2 else "sum")
    if "reduce" in kwargs:
        return kwargs["reduce"]
    position = {"scatter_reduce": 4, "segment_reduce": 1}[short]  # (input, dim, index, src, reduce), (data, reduce)
    return args[position] if len(args) > position else ""


def aggregation_deeplift(dl, func, name, args, kwargs, active):
    """Sums and means are linear (their gradient is exact); max and min take the path-averaged Jacobian."""
    if reduction(name, args, kwargs) in ("sum", "mean"):
        return func(*args, **kwargs)
    return reference.path_averaged(dl, func, name, args, kwargs, active)


@register("graph_aggregation", deeplift=aggregation_deeplift)
def aggregation(ctx, func, name, args, kwargs):
    rule = RULES.get(reduction(name, args, kwargs))
    if name == "_sparse_mm" and ctx.active(args[0]):  # adjacency values times node states: a product
        return ctx.unknown(func, f"{name} (an adjacency that carries relevance)", args, kwargs)
    if rule is None:
        return ctx.unknown(func, f"{name} (reduce={reduction(name, args, kwargs)!r})", args, kwargs)
    return ctx.plain(func, name, args, kwargs, rule=rule)


def in_edge_softmax() -> bool:
    """Whether the running op comes from torch_geometric.utils.softmax (attention coefficients over edges)."""
    frame = sys._getframe(2)
    for _ in range(_SOFTMAX_DEPTH):
        if frame is None:
            return False
        if frame.f_code.co_name == "softmax" and frame.f_globals.get("__name__", "").startswith(_SOFTMAX_MODULE):
            return True
        frame = frame.f_back
    return False


@register("graph_softmax", deeplift=elementwise.rescale)  # exp: element-wise
def edge_softmax_exp(ctx, func, name, args, kwargs):
    if not in_edge_softmax():
        return ctx.unknown(func, name, args, kwargs)
    if ctx.composite.softmax == "constant":  # CP-LRP: the coefficients are constants, the division sees none
        row = ctx.row(name, "Constant (CP-LRP edge softmax)")
        out = func(*args, **kwargs).detach()
        if row is not None:
            row.backward_seen = True
        return out
    return ctx.plain(func, name, args, kwargs, rule="Gradient (AttnLRP edge softmax)")


_divide = HANDLERS["divide"].lrp


@register("divide", deeplift=HANDLERS["divide"].deeplift)
def divide(ctx, func, name, args, kwargs):
    """Division, with the edge softmax's normalisation by its own per-node sum ruled with the softmax."""
    if ctx.active(denominator(name, args, kwargs)) and in_edge_softmax():
        return ctx.plain(func, name, args, kwargs, rule="Gradient (AttnLRP edge softmax)")
    return _divide(ctx, func, name, args, kwargs)
