"""Graph networks: relevance of node and edge features, and GNN-LRP's relevant walks (Schnake et al. 2021).

A walk W = (v_0, v_1, ..., v_L) follows the message flow of an L-layer network: layer l sends v_{l-1}'s state to
v_l along an edge v_{l-1} -> v_l (``edge_index[0] -> edge_index[1]``) or keeps it at the node (v_{l-1} = v_l: self
loops, root weights). Its relevance is LRP's relevance at the input node v_0 when the relevance leaving each layer l
is kept at node v_l only:

    R_W = sum_features x_{v_0} * (J_1^T M_{v_1} J_2^T M_{v_2} ... J_L^T M_{v_L} g)_{v_0}

with J_l^T the layer's LRP backward, M_v the mask of node v's row, g the target's output relevance per output. The
masks of each layer sum to the identity, so the walks' relevances sum to the node relevance total.

Graph classification (level="graph"): a readout pools the nodes into one row per graph (global_add_pool,
global_mean_pool, global_max_pool over the batch vector), and a walk's relevance is its share of the graph's
output. The walks then end at every node (the mask at layer L picks v_L's part of the pooled sum), and the walks
of all end nodes sum to the graph's relevance total: the explained output less what the biases absorb.

Batched: the walks that share (v_1, ..., v_L) differ only in v_0, which the input relevance of one backward gives
all at once; and B such suffixes run in one forward and backward on B disjoint copies of the graph (graph batching),
each copy masked to its own suffix and explaining its own output (its end node's row, or its own graph's row). A
graph of N nodes with S suffixes costs ceil(S / B) passes, not one per walk. Each layer must run once per forward:
a layer used at several steps (shared weights) would make a walk's step ambiguous and is refused.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .engine.batch import BatchMixingWarning
from .attribution.lrp import LRP


@dataclass
class Walks:
    """Walks (rows v_0..v_L) and their relevance, most relevant first.

    Attributes:
        walks: (W, L + 1) node ids, one walk per row.
        relevance: (W,) their relevance.
    """
    walks: torch.Tensor  # (W, L + 1) node ids
    relevance: torch.Tensor  # (W,)

    def top(self, k: int) -> list[tuple[tuple[int, ...], float]]:
        """The k most relevant walks as (nodes, relevance).

        Args:
            k: How many walks.

        Returns:
            A list of (nodes, relevance).
        """
        return [(tuple(w.tolist()), float(r)) for w, r in zip(self.walks[:k], self.relevance[:k])]


def check_graph(x: torch.Tensor, edge_index: torch.Tensor):
    """Check node features (N, F) and edges (2, E) of node ids below N.

    Args:
        x: Node features (N, F).
        edge_index: Edges (2, E) of node ids: sources in row 0, targets in row 1.

    Raises:
        ValueError: for x or edge_index of the wrong shape or type, or node ids out of range.
    """
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
    """LRP relevance of node features and edge features for one graph.

    Both feature sets are explained as one sample: packed side by side into one (1, N + E, width) input.

    Args:
        model: The graph network.
        x: Node features (N, F).
        edge_index: Edges (2, E) of node ids: sources in row 0, targets in row 1.
        edge_attr: Edge features (E, F_e), or None.
        target: The class explained: an int, or None (the predicted class).
        node: The node whose output row is explained; None: the sum over all nodes, for graph-level readouts.
        composite: The composite (name or object), as LRP takes it.
        forward: callable(model, x, edge_index, edge_attr) -> node outputs (default model(x, edge_index, edge_attr),
            or model(x, edge_index) without edge_attr).
        **options: Passed to LRP (strict, canonizers, composite parameters).

    Returns:
        A triple (node relevance (N, F), edge relevance (E, F_e) or None, Explanation).

    Raises:
        ValueError: for a graph or edge_attr of the wrong shape.
    """
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
    """For each node, the nodes a message reaches it from in one layer: its in-neighbours and itself.

    Args:
        edge_index: Edges (2, E) of node ids: sources in row 0, targets in row 1.
        num_nodes: The number of nodes.

    Returns:
        A sorted list of node ids per node.
    """
    before = [{node} for node in range(num_nodes)]
    for source, target in edge_index.t().tolist():
        before[target].add(source)
    return [sorted(nodes) for nodes in before]


def suffixes(before: list[list[int]], node: int, length: int) -> list[tuple[int, ...]]:
    """Every (v_1, ..., v_L) with v_L = node and each v_{l-1} a predecessor of v_l.

    Args:
        before: The predecessors of each node (predecessors()).
        node: The walk's last node.
        length: The walk's length L.

    Returns:
        A list of node-id tuples.
    """
    found = [(node,)]
    for _ in range(length - 1):
        found = [(previous,) + suffix for suffix in found for previous in before[suffix[0]]]
    return found


def replicate(x: torch.Tensor, edge_index: torch.Tensor, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint copies of the graph: node features stacked, edges shifted by N per copy.

    Args:
        x: Node features (N, F).
        edge_index: Edges (2, E) of node ids: sources in row 0, targets in row 1.
        copies: How many copies.

    Returns:
        A pair (x, edge_index) of the copies.
    """
    num_nodes = x.shape[0]
    shift = torch.arange(copies, device=edge_index.device).repeat_interleave(edge_index.shape[1]) * num_nodes
    return x.repeat(copies, *([1] * (x.dim() - 1))), edge_index.repeat(1, copies) + shift


class LayerMasks:
    """Forward hooks that keep the gradient leaving layer l at the rows masks[l] (a context manager), and check
    that each layer ran once per forward, in the order given, on one row per node.

    Args:
        model: The graph network.
        layers: Module names, in the order they run.
        masks: Per layer, the rows (nodes) whose gradient is kept.

    Raises:
        ValueError: for a layer the model does not have, or one named twice.
    """

    def __init__(self, model, layers, masks):
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise ValueError(f"layers {missing} are not modules of the model; pick from "
                             f"{sorted(n for n in modules if n)}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers {list(layers)} name a module twice; a walk takes one step per layer, so a layer "
                             "used at several steps (shared weights) is not supported: give each step its own module")
        self.modules = [modules[name] for name in layers]
        self.layers, self.masks, self.ran, self.handles = list(layers), masks, [], []

    def _hook(self, name, mask):
        def hook(module, args, output):
            if name in self.ran:
                raise ValueError(f"layer {name!r} ran more than once in one forward; a walk takes one step per "
                                 "layer, so a layer used at several steps (shared weights) is not supported: give "
                                 "each step its own module")
            self.ran.append(name)
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"{type(module).__name__} returned {type(output).__name__}; relevant_walks needs "
                                "message-passing layers that return node states as one tensor")
            if output.shape[0] != len(mask):
                raise ValueError(f"layer {name!r} returned {output.shape[0]} rows for {len(mask)} nodes; walks step "
                                 "through layers that keep one row per node (the message-passing layers before the "
                                 "readout), not through pooling or the layers after it")
            output.register_hook(lambda grad: grad * mask.to(grad.dtype).reshape(-1, *([1] * (grad.dim() - 1))))
        return hook

    def __enter__(self):
        self.ran.clear()
        self.handles = [module.register_forward_hook(self._hook(name, mask))
                        for name, module, mask in zip(self.layers, self.modules, self.masks)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if exc[0] is None:
            self.check()

    def check(self):
        """Every layer ran, in the order given (a walk's step l is layer l)."""
        absent = [name for name in self.layers if name not in self.ran]
        if absent:
            raise ValueError(f"layers {absent} did not run in the forward; name the message-passing layers the "
                             "explained output goes through")
        if self.ran != self.layers:
            raise ValueError(f"layers ran in the order {self.ran}, not {self.layers}; list them in the order they run "
                             "(a walk's step l is layer l)")


LEVELS = ("node", "graph")


def _end_nodes(node, level: str, num_nodes: int) -> list[int]:
    """The walks' end nodes: node (an int or a list of ints), or every node for a graph-level readout."""
    if node is None:
        if level == "node":
            raise ValueError("node is missing: name the node (or list of nodes) whose output the walks explain, "
                             "e.g. node=7 or node=[3, 7]; level='graph' explains a pooled graph output")
        return list(range(num_nodes))
    nodes = [node] if isinstance(node, numbers.Integral) else list(node) if isinstance(node, (list, tuple)) else []
    if not nodes or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in nodes):
        raise ValueError(f"node must be a node id or a non-empty list of node ids, got {node!r}")
    nodes = [int(v) for v in nodes]
    outside = [v for v in nodes if not 0 <= v < num_nodes]
    if outside:
        raise ValueError(f"node {outside[0]} is not a node of the graph (0..{num_nodes - 1})")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"node lists a node twice: {nodes}")
    return nodes


def _targets(target, ends: list[int]):
    """Per end node its class (or None: the predicted class), from an int, None or one class per end node."""
    if target is None or isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return {end: None if target is None else int(target) for end in ends}
    if isinstance(target, (list, tuple)) and len(target) == len(ends):
        return dict(zip(ends, (int(t) for t in target)))
    raise ValueError(f"target must be a class int, None (the predicted class) or one class per end node "
                     f"({len(ends)}), got {target!r}")


def relevant_walks(model: torch.nn.Module, x: torch.Tensor, edge_index: torch.Tensor, layers, node=None,
                   target=None, *, level: str = "node", composite="auto", forward: Callable | None = None,
                   batch_size: int = 64, **options) -> Walks:
    """Relevance of every walk through layers ending at node, for the target class.

    It takes ceil(#suffixes / batch_size) forward and backward passes. Each layer must run once per forward (no
    shared layers).

    Args:
        model: The graph network.
        x: Node features (N, F).
        edge_index: Edges (2, E) of node ids: sources in row 0, targets in row 1.
        layers: Module names, in the order they run.
        node: The end node: an int or a list of nodes; None (level "graph"): the walks ending at every node.
        target: A class int, None (the predicted class) or one class per end node.
        level: "node": the model returns one row per node and a walk explains its end node's row; "graph": the model
            pools its nodes into one row per graph and a walk explains the graph's row.
        composite: The composite (name or object), as LRP takes it.
        forward: callable(model, x, edge_index) -> node outputs (level "node"; default model(x, edge_index)), or
            callable(model, x, edge_index, batch) -> graph outputs (level "graph").
        batch_size: Walk suffixes per pass.
        **options: Passed to LRP (strict, canonizers, composite parameters).

    Returns:
        The Walks, most relevant first.

    Raises:
        ValueError: for an unknown level, no layers, a layer that does not run exactly once per forward, or a graph
            of the wrong shape.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be 'node' (one output row per node) or 'graph' (a pooled output per graph), "
                         f"got {level!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: name the model's message-passing layers, e.g. layers=['conv1', 'conv2']")
    check_graph(x, edge_index)
    num_nodes = x.shape[0]
    ends = _end_nodes(node, level, num_nodes)
    classes = _targets(target, ends)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    before = predecessors(edge_index, num_nodes)
    tails = [suffix for end in ends for suffix in suffixes(before, end, len(layers))]
    found_walks, found_relevance = [], []
    for start in range(0, len(tails), batch_size):
        chunk = tails[start:start + batch_size]
        relevance = _pass(model, x, edge_index, layers, chunk, [classes[suffix[-1]] for suffix in chunk], level,
                          composite, forward, options)
        for copy, suffix in enumerate(chunk):
            first = before[suffix[0]]
            found_walks += [(v0,) + suffix for v0 in first]
            found_relevance.append(relevance[copy, first])
    walks = torch.tensor(found_walks, dtype=torch.long)
    relevance = torch.cat(found_relevance)
    order = torch.argsort(relevance, descending=True)
    return Walks(walks[order], relevance[order])


def _pass(model, x, edge_index, layers, chunk, targets, level, composite, forward, options) -> torch.Tensor:
    """One forward and backward on one copy of the graph per suffix, each masked to its suffix and explaining its
    own output (its end node's row, or its graph's row): the per-node input relevance, (copies, N)."""
    copies, num_nodes = len(chunk), x.shape[0]
    _, edges = replicate(x, edge_index, copies)
    batch = torch.arange(copies, device=x.device).repeat_interleave(num_nodes)
    rows = torch.arange(copies, device=x.device) * num_nodes + torch.tensor(chunk, device=x.device).t()
    masks = [torch.zeros(copies * num_nodes, device=x.device).index_fill_(0, keep, 1) for keep in rows]

    def copies_forward(m, z):
        flat = z.reshape(copies * num_nodes, *z.shape[2:])
        if level == "graph":
            out = (forward or _call_with_batch)(m, flat, edges, batch)
            if not isinstance(out, torch.Tensor) or out.shape[0] != copies:
                raise ValueError(f"with level='graph' the forward must return one row per graph, pooled by the batch "
                                 f"vector (e.g. global_add_pool(x, batch)); got {_rows(out)} for {copies} graphs")
            return out
        out = (forward or _call)(m, flat, edges)
        if not isinstance(out, torch.Tensor) or out.shape[0] != copies * num_nodes:
            raise ValueError(f"with level='node' the model must return one row per node; got {_rows(out)} for "
                             f"{copies * num_nodes} nodes (a model that pools the graph needs level='graph')")
        return out[rows[-1]]  # each copy's end node

    targets = None if targets[0] is None else targets  # None for one end node is None for all (_targets)
    # the copies are disjoint graphs, each explaining its own output: the batch-mixing check cannot see that
    with LayerMasks(model, layers, masks), warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchMixingWarning)
        explanation = LRP(model, composite, forward=copies_forward, **options)(x.unsqueeze(0).repeat(copies, 1, 1),
                                                                               targets)
    return explanation.relevance.reshape(copies, num_nodes, -1).sum(-1)


def _call_with_batch(model, x, edge_index, batch):
    return model(x, edge_index, batch)


def _rows(out) -> str:
    return f"{out.shape[0]} rows" if isinstance(out, torch.Tensor) and out.dim() else f"{type(out).__name__}"
