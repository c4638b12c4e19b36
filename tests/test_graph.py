"""GNN-LRP relevant walks against a brute-force reference (one masked LRP backward per walk), and their total."""
import itertools

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv

import relprop
from relprop.graph import Walks, explain_graph, relevant_walks

NODES, FEATURES = 6, 3


class Net(torch.nn.Module):
    """Message-passing layers with ReLUs between them and a node-wise linear head."""

    def __init__(self, convs):
        super().__init__()
        self.convs = torch.nn.ModuleList(convs)
        self.head = torch.nn.Linear(FEATURES, 2)

    def forward(self, x, edge_index):
        for conv in self.convs:
            x = conv(x, edge_index).relu()
        return self.head(x)


def model(kind, layers):
    torch.manual_seed(4)
    make = {"gcn": lambda: GCNConv(FEATURES, FEATURES),
            "gin": lambda: GINConv(torch.nn.Linear(FEATURES, FEATURES), train_eps=True),
            "sage": lambda: SAGEConv(FEATURES, FEATURES, aggr="max"),
            "gat": lambda: GATConv(FEATURES, FEATURES)}[kind]
    net = Net([make() for _ in range(layers)]).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.3, 0.3)
    return net


@pytest.fixture
def graph():
    torch.manual_seed(5)
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 2, 0], [1, 0, 2, 3, 4, 5, 0, 4, 3]])
    return torch.randn(NODES, FEATURES) + 0.5, edge_index


def brute_force(net, x, edge_index, layers, node, target):
    """Every walk ending at node, each by its own LRP run with the relevance of layer l kept at the walk's v_l."""
    steps = {(int(s), int(t)) for s, t in edge_index.t()} | {(v, v) for v in range(NODES)}
    walks = {}
    for walk in itertools.product(range(NODES), repeat=len(layers) + 1):
        if walk[-1] != node or any((a, b) not in steps for a, b in zip(walk, walk[1:])):
            continue
        handles = []
        for layer, keep in zip(layers, walk[1:]):
            def hook(module, args, output, keep=keep):
                mask = torch.zeros(NODES, 1)
                mask[keep] = 1
                output.register_hook(lambda grad: grad * mask)
            handles.append(net.get_submodule(layer).register_forward_hook(hook))
        try:
            relevance = relprop.explain(net, x, target, composite="epsilon", strict=True,
                                        forward=lambda m, z: m(z, edge_index)).relevance
        finally:
            for handle in handles:
                handle.remove()
        walks[walk] = float(relevance[walk[0]].sum())
    return walks


@pytest.mark.parametrize("kind,layers", [("gcn", 2), ("gin", 2), ("sage", 2), ("gat", 2), ("gcn", 3)])
def test_batched_walk_relevance_equals_one_backward_per_walk(graph, kind, layers):
    x, edge_index = graph
    net = model(kind, layers)
    names = [f"convs.{i}" for i in range(layers)]
    expected = brute_force(net, x, edge_index, names, node=4, target=1)
    found = relevant_walks(net, x, edge_index, names, node=4, target=1, composite="epsilon", strict=True,
                           batch_size=3)
    assert len(found.walks) == len(expected)
    for walk, relevance in zip(found.walks.tolist(), found.relevance.tolist()):
        assert relevance == pytest.approx(expected[tuple(walk)], abs=1e-5, rel=1e-4)
    assert (found.relevance[:-1] >= found.relevance[1:]).all()  # most relevant first


def test_walk_relevances_sum_to_the_node_relevance_total(graph):
    x, edge_index = graph
    net = model("gcn", 2)
    found = relevant_walks(net, x, edge_index, ["convs.0", "convs.1"], node=2, target=0, composite="epsilon")
    mask = torch.zeros(NODES, 2, dtype=torch.bool)
    mask[2, 0] = True
    total = relprop.explain(net, x, mask, composite="epsilon", forward=lambda m, z: m(z, edge_index)).relevance.sum()
    torch.testing.assert_close(found.relevance.sum(), total, atol=1e-5, rtol=1e-4)


def test_batch_size_changes_the_passes_not_the_result(graph):
    x, edge_index = graph
    net = model("gin", 2)
    one = relevant_walks(net, x, edge_index, ["convs.0", "convs.1"], node=0, target=1, batch_size=1)
    all_at_once = relevant_walks(net, x, edge_index, ["convs.0", "convs.1"], node=0, target=1, batch_size=100)
    assert sorted(map(tuple, one.walks.tolist())) == sorted(map(tuple, all_at_once.walks.tolist()))
    torch.testing.assert_close(one.relevance.sort().values, all_at_once.relevance.sort().values)


def test_top_lists_walks_as_node_tuples():
    walks = Walks(torch.tensor([[0, 1], [1, 1]]), torch.tensor([2.0, -1.0]))
    assert walks.top(1) == [((0, 1), 2.0)]


def test_unknown_layer_names_are_an_error_naming_the_modules(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match="convs.0"):
        relevant_walks(model("gcn", 2), x, edge_index, ["conv1"], node=0, target=0)


def test_node_outside_the_graph_is_an_error(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match="node 9"):
        relevant_walks(model("gcn", 2), x, edge_index, ["convs.0"], node=9, target=0)


def test_explaining_a_graph_leaves_edge_relevance_empty_without_edge_features(graph):
    x, edge_index = graph
    nodes, edges, explanation = explain_graph(model("gcn", 2), x, edge_index, target=1, strict=True)
    assert edges is None and nodes.shape == x.shape
    torch.testing.assert_close(nodes.sum(), explanation.relevance.sum())


def test_edge_index_with_nodes_outside_x_is_an_error(graph):
    x, _ = graph
    with pytest.raises(ValueError, match="outside 0..5"):
        relevant_walks(model("gcn", 2), x, torch.tensor([[0, 6], [1, 2]]), ["convs.0"], node=0, target=0)


def test_edge_index_of_pairs_is_an_error_saying_how_to_transpose(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match=r"\(2, edges\)"):
        explain_graph(model("gcn", 2), x, edge_index.t(), target=0)


def test_edge_features_need_one_row_per_edge(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match="one row per edge"):
        explain_graph(model("gcn", 2), x, edge_index, torch.randn(edge_index.shape[1]), target=0)
