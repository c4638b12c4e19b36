"""Graph networks: relevance of node and edge features, and GNN-LRP's relevant walks (Schnake et al. 2021).

A walk W = (v_0, v_1, ..., v_L) follows the message flow of an L-layer network: layer l sends v_{l-1}'s state to
v_l along an edge v_{l-1} -> v_l (``edge_index[0] -> edge_index[1]``) or keeps it at the node (v_{l-1} = v_l: self
loops, root weights). Its relevance is LRP's relevance at the input node v_0 when the relevance leaving each layer l
is kept at node v_l only:

    R_W = sum_features x_{v_0} * (J_1^T M_{v_1} J_2^T M_{v_2} ... J_L^T M_{v_L} g)_{v_0}

with J_l^T the layer's LRP backward, M_v the mask of node v's row, g the target's output relevance per output. The
masks of each layer sum to the identity, so the walks' relevances sum to the node relevance total.

Batched: the walks that share (v_1, ..., v_L) differ only in v_0, which the input relevance of one backward gives
all at once; and B such suffixes run in one forward and backward on B disjoint copies of the graph (graph batching),
each copy masked to its own suffix. A graph of N nodes with S suffixes costs ceil(S / B) passes, not one per walk.
The model must act on nodes and edges only (no pooling over the whole graph), as node-level GNNs do.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .engine.batch import BatchMixingWarning
from .lrp import LRP


@dataclass
class Walks:
    """Walks (rows v_0..v_L) and their relevance, most relevant first."""
    walks: torch.Tensor  # (W, L + 1) node ids
    relevance: torch.Tensor  # (W,)

    def top(self, k: int) -> list[tuple[tuple[int, ...], float]]:
        """The k most relevant walks as (nodes, relevance)."""
        return [(tuple(w.tolist()), float(r)) for w, r in zip(self.walks[:k], self.relevance[:k])]


def check_graph(x: torch.Tensor, edge_index: torch.Tensor):
    """Node features (N, F) and edges (2, E) of node ids below N, or a clear error."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be node features shaped (nodes, features), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2 \
            or edge_index.is_floating_point():
        raise ValueError("edge_index must be an integer tensor shaped (2, edges): sources in row 0, targets in "
                         "row 1 (a list of (source, target) pairs p becomes torch.tensor(p).t())")
    if edge_index.numel() and not 0 <= int(edge_index.min()) <= int(edge_index.max()) < x.shape[0]:
        raise ValueError(f"edge_index names nodes outside 0..{x.shape[0] - 1} (the rows of x)")


def _call(model, x, edge_index):
    return model(x, edge_index)


def _call_with_edges(model, x, edge_index, edge_attr):
    return model(x, edge_index, edge_attr)


def explain_graph(model: torch.nn.Module, x: torch.Tensor, edge_index: torch.Tensor, edge_attr=None, target=None, *,
                  node: int | None = None, composite="auto", forward: Callable | None = None, **options):
    """LRP relevance of node features and edge features for one graph: (node relevance, edge relevance or None,
    Explanation). The output explained is node's row, or the sum over all nodes (node=None) for graph-level
    readouts; forward: callable(model, x, edge_index, edge_attr) -> node outputs (default model(x, edge_index,
    edge_attr), or model(x, edge_index) without edge_attr); options go to LRP.

    Both feature sets are explained as one sample: packed side by side into one (1, N + E, width) input."""
    check_graph(x, edge_index)
    num_nodes, node_width = x.shape[0], x.shape[1]
    if edge_attr is None:
        call = forward or (lambda m, nodes, edges, _: _call(m, nodes, edges))
        edge_attr = x.new_zeros(0, 0)
        edge_width = 0
    else:
        if edge_attr.dim() != 2 or edge_attr.shape[0] != edge_index.shape[1]:
            raise ValueError(f"edge_attr has shape {tuple(edge_attr.shape)}; pass one row per edge, shaped "
                             f"({edge_index.shape[1]}, features) (a vector: edge_attr.unsqueeze(1))")
        call = forward or _call_with_edges
        edge_width = edge_attr.shape[1]
    width = max(node_width, edge_width)
    packed = torch.cat([torch.nn.functional.pad(x, (0, width - node_width)),
                        torch.nn.functional.pad(edge_attr, (0, width - edge_width))]).unsqueeze(0)
    with_edges = edge_width > 0

    def packed_forward(model, z):
        out = call(model, z[0, :num_nodes, :node_width], edge_index,
                   z[0, num_nodes:, :edge_width] if with_edges else None)
        return (out.sum(0) if node is None else out[node]).unsqueeze(0)

    explanation = LRP(model, composite, forward=packed_forward, **options)(packed, target)
    relevance = explanation.relevance[0]
    edges = relevance[num_nodes:, :edge_width] if with_edges else None
    return relevance[:num_nodes, :node_width], edges, explanation


def predecessors(edge_index: torch.Tensor, num_nodes: int) -> list[list[int]]:
    """For each node, the nodes a message reaches it from in one layer: its in-neighbours and itself."""
    before = [{node} for node in range(num_nodes)]
    for source, target in edge_index.t().tolist():
        before[target].add(source)
    return [sorted(nodes) for nodes in before]


def suffixes(before: list[list[int]], node: int, length: int) -> list[tuple[int, ...]]:
    """Every (v_1, ..., v_L) with v_L = node and each v_{l-1} a predecessor of v_l."""
    found = [(node,)]
    for _ in range(length - 1):
        found = [(previous,) + suffix for suffix in found for previous in before[suffix[0]]]
    return found


def replicate(x: torch.Tensor, edge_index: torch.Tensor, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """copies disjoint copies of the graph: node features stacked, edges shifted by N per copy."""
    num_nodes = x.shape[0]
    shift = torch.arange(copies, device=edge_index.device).repeat_interleave(edge_index.shape[1]) * num_nodes
    return x.repeat(copies, *([1] * (x.dim() - 1))), edge_index.repeat(1, copies) + shift


def mask_layers(model, layers, masks):
    """Forward hooks on the message-passing layers that keep the gradient leaving layer l at the rows masks[l]."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model; pick from {sorted(n for n in modules if n)}")

    def hook_for(mask):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"{type(module).__name__} returned {type(output).__name__}; relevant_walks needs "
                                "message-passing layers that return node states as one tensor")
            output.register_hook(lambda grad: grad * mask.to(grad.dtype).reshape(-1, *([1] * (grad.dim() - 1))))
        return hook

    return [modules[name].register_forward_hook(hook_for(mask)) for name, mask in zip(layers, masks)]


def relevant_walks(model: torch.nn.Module, x: torch.Tensor, edge_index: torch.Tensor, layers, node: int, target: int,
                   *, composite="auto", forward: Callable | None = None, batch_size: int = 64,
                   **options) -> Walks:
    """Relevance of every walk through layers (module names, in the order they run) ending at node, for the
    target class of node's output; ceil(#suffixes / batch_size) forward and backward passes.

    forward: callable(model, x, edge_index) -> node outputs (default model(x, edge_index)); options go to LRP
    (strict, canonizers, composite parameters). Each layer must run once per forward (no shared layers).
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: name the model's message-passing layers, e.g. layers=['conv1', 'conv2']")
    check_graph(x, edge_index)
    num_nodes = x.shape[0]
    if not 0 <= node < num_nodes:
        raise ValueError(f"node {node} is not a node of the graph (0..{num_nodes - 1})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    forward = forward or _call
    before = predecessors(edge_index, num_nodes)
    ends = suffixes(before, node, len(layers))
    found_walks, found_relevance = [], []
    for start in range(0, len(ends), batch_size):
        chunk = ends[start:start + batch_size]
        copies = len(chunk)
        xs, edges = replicate(x, edge_index, copies)
        rows = torch.arange(copies, device=x.device) * num_nodes + torch.tensor(chunk, device=x.device).t()
        masks = [torch.zeros(copies * num_nodes, device=x.device).index_fill_(0, keep, 1) for keep in rows]
        handles = mask_layers(model, layers, masks)
        try:
            attributor = LRP(model, composite, forward=lambda m, z, edges=edges: forward(m, z, edges), **options)
            with warnings.catch_warnings():  # nodes are the batch here on purpose: each walk is read per node
                warnings.simplefilter("ignore", BatchMixingWarning)
                explanation = attributor(xs, target)
        finally:
            for handle in handles:
                handle.remove()
        per_node = explanation.relevance.reshape(copies, num_nodes, -1).sum(-1)
        for copy, suffix in enumerate(chunk):
            first = before[suffix[0]]
            found_walks += [(v0,) + suffix for v0 in first]
            found_relevance.append(per_node[copy, first])
    walks = torch.tensor(found_walks, dtype=torch.long)
    relevance = torch.cat(found_relevance)
    order = torch.argsort(relevance, descending=True)
    return Walks(walks[order], relevance[order])
