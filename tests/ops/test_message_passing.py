"""Graph aggregation ops against their formulas, and PyTorch Geometric layers run strict, conserving, against
gradient x input where LRP-0 equals it (bias-free ReLU networks), with node- and edge-feature relevance."""
import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, GINConv, GINEConv, GraphConv, SAGEConv

import relprop
from relprop.engine.intercept import UnsupportedOperation
from relprop.gnn import explain_graph

NODES, EDGES, FEATURES = 7, 16, 4


@pytest.fixture
def graph():
    torch.manual_seed(0)
    edge_index = torch.randint(0, NODES, (2, EDGES))
    edge_index[1, :NODES] = torch.arange(NODES)  # every node receives at least one message
    return torch.randn(NODES, FEATURES), edge_index


def explain_messages(aggregate, messages, relevance_out):
    """LRP relevance of each message under aggregate(messages) -> node states, for given output relevance."""
    def forward(model, packed):
        return aggregate(packed[0]).unsqueeze(0)
    return relprop.explain(torch.nn.Identity(), messages.unsqueeze(0), target=relevance_out.unsqueeze(0),
                           strict=True, forward=forward).relevance[0]


def scatter_target(edge_index):
    return edge_index[1].unsqueeze(1).expand(-1, FEATURES)


def test_sum_aggregation_gives_each_message_its_share_of_the_node_relevance(graph):
    _, edge_index = graph
    messages, relevance_out = torch.rand(EDGES, FEATURES) + 0.1, torch.randn(NODES, FEATURES)
    target = edge_index[1]
    for aggregate in (lambda m: torch.zeros(NODES, FEATURES).scatter_add_(0, scatter_target(edge_index), m),
                      lambda m: torch.zeros(NODES, FEATURES).index_add(0, target, m),
                      lambda m: torch.zeros(NODES, FEATURES).scatter_reduce(0, scatter_target(edge_index), m, "sum")):
        total = torch.zeros(NODES, FEATURES)
        for edge in range(EDGES):
            total[target[edge]] += messages[edge]
        expected = messages / total[target] * relevance_out[target]  # R_e = m_e / y_i * R_i
        torch.testing.assert_close(explain_messages(aggregate, messages, relevance_out), expected)


def test_mean_aggregation_divides_the_node_relevance_by_message_size(graph):
    _, edge_index = graph
    messages, relevance_out = torch.rand(EDGES, FEATURES) + 0.1, torch.randn(NODES, FEATURES)
    target = edge_index[1]
    counts = torch.bincount(target, minlength=NODES).float().unsqueeze(1)
    mean = torch.stack([messages[target == node].mean(0) for node in range(NODES)])
    expected = messages / counts[target] / mean[target] * relevance_out[target]

    def aggregate(m):
        return torch.zeros(NODES, FEATURES).scatter_reduce(0, scatter_target(edge_index), m, "mean",
                                                           include_self=False)
    torch.testing.assert_close(explain_messages(aggregate, messages, relevance_out), expected)


def test_max_aggregation_gives_all_node_relevance_to_the_winning_message(graph):
    _, edge_index = graph
    messages, relevance_out = torch.randn(EDGES, FEATURES), torch.randn(NODES, FEATURES)
    target = edge_index[1]
    expected = torch.zeros(EDGES, FEATURES)
    for node in range(NODES):
        incoming = (target == node).nonzero().flatten()
        winners = incoming[messages[incoming].argmax(0)]
        expected[winners, torch.arange(FEATURES)] = relevance_out[node]

    def aggregate(m):
        return torch.zeros(NODES, FEATURES).scatter_reduce(0, scatter_target(edge_index), m, "amax",
                                                           include_self=False)
    torch.testing.assert_close(explain_messages(aggregate, messages, relevance_out), expected)


def test_segment_sum_gives_each_row_its_share():
    data, lengths = torch.rand(6, FEATURES) + 0.1, torch.tensor([2, 3, 1])
    relevance_out = torch.randn(3, FEATURES)
    segment = torch.repeat_interleave(torch.arange(3), lengths)
    total = torch.stack([data[segment == s].sum(0) for s in range(3)])
    expected = data / total[segment] * relevance_out[segment]
    relevance = explain_messages(lambda m: torch.segment_reduce(m, "sum", lengths=lengths), data, relevance_out)
    torch.testing.assert_close(relevance, expected)


def test_sparse_adjacency_product_gives_each_weighted_neighbour_its_share(graph):
    x, edge_index = graph
    weights = torch.rand(EDGES) + 0.1
    dense = torch.zeros(NODES, NODES).index_put_((edge_index[1], edge_index[0]), weights, accumulate=True)
    states, relevance_out = torch.rand(NODES, FEATURES) + 0.1, torch.randn(NODES, FEATURES)
    # R_j = sum_i A_ij x_j / y_i * R_i
    expected = torch.einsum("ij,jf,if->jf", dense, states, relevance_out / (dense @ states))
    relevance = explain_messages(lambda m: torch.sparse.mm(dense.to_sparse_csr(), m), states, relevance_out)
    torch.testing.assert_close(relevance, expected)


def test_gcn_on_a_sparse_adjacency_runs_strict_and_equals_gradient_times_input_without_biases(graph):
    from torch_geometric.utils import to_torch_csc_tensor

    x, edge_index = graph
    model = make("gcn", bias=False)
    adjacency = to_torch_csc_tensor(edge_index, size=(NODES, NODES)).t()
    relevance = relprop.explain(model, x, 1, composite="epsilon", epsilon=1e-12, strict=True,
                                forward=lambda m, z: m(z, adjacency)).relevance
    leaf = x.clone().requires_grad_(True)
    model(leaf, adjacency)[:, 1].sum().backward()
    torch.testing.assert_close(relevance, leaf.grad * x, atol=1e-5, rtol=1e-4)


def test_product_aggregation_is_unsupported_under_strict(graph):
    _, edge_index = graph
    with pytest.raises(UnsupportedOperation, match="reduce='prod'"):
        explain_messages(lambda m: torch.ones(NODES, FEATURES).scatter_reduce(0, scatter_target(edge_index), m,
                                                                              "prod"),
                         torch.rand(EDGES, FEATURES), torch.randn(NODES, FEATURES))


def test_exp_outside_an_edge_softmax_stays_unsupported():
    with pytest.raises(UnsupportedOperation, match="exp"):
        relprop.explain(torch.nn.Identity(), torch.randn(2, 3), target=0, strict=True,
                        forward=lambda model, x: x.exp())


class TwoLayers(torch.nn.Module):
    """conv1 -> ReLU -> conv2, node outputs."""

    def __init__(self, conv1, conv2):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def mlp(width, bias):
    return torch.nn.Sequential(torch.nn.Linear(width, width, bias=bias), torch.nn.ReLU(),
                               torch.nn.Linear(width, width, bias=bias))


def make(kind, bias):
    """A two-layer model of one PyG layer kind, with or without biases."""
    layers = {
        "gcn": lambda: GCNConv(FEATURES, FEATURES, bias=bias),
        "gin": lambda: GINConv(mlp(FEATURES, bias), train_eps=True),
        "graph": lambda: GraphConv(FEATURES, FEATURES, bias=bias),
        "sage_mean": lambda: SAGEConv(FEATURES, FEATURES, bias=bias),
        "sage_max": lambda: SAGEConv(FEATURES, FEATURES, aggr="max", bias=bias),
        "sage_sum": lambda: SAGEConv(FEATURES, FEATURES, aggr="sum", bias=bias),
        "gat": lambda: GATConv(FEATURES, FEATURES // 2, heads=2, bias=bias),
    }[kind]
    torch.manual_seed(1)
    model = TwoLayers(layers(), layers()).eval()
    if bias:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.uniform_(-0.5, 0.5)  # non-zero biases
    return model


PIECEWISE_LINEAR = ["gcn", "gin", "graph", "sage_mean", "sage_max", "sage_sum"]


@pytest.mark.parametrize("kind", PIECEWISE_LINEAR + ["gat"])
def test_layers_with_biases_run_strict(graph, kind):
    x, edge_index = graph
    explanation = relprop.explain(make(kind, bias=True), x, target=1, strict=True,
                                  forward=lambda model, z: model(z, edge_index))
    assert torch.isfinite(explanation.relevance).all() and explanation.relevance.abs().sum() > 0


@pytest.mark.parametrize("kind", PIECEWISE_LINEAR)
def test_bias_free_relu_layers_conserve_and_equal_gradient_times_input(graph, kind):
    x, edge_index = graph
    model = make(kind, bias=False)
    explanation = relprop.explain(model, x, target=1, composite="epsilon", epsilon=1e-12, strict=True,
                                  forward=lambda m, z: m(z, edge_index))
    leaf = x.clone().requires_grad_(True)
    model(leaf, edge_index)[:, 1].sum().backward()  # LRP-0 of a bias-free ReLU network is gradient x input
    torch.testing.assert_close(explanation.relevance, leaf.grad * x, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(explanation.relevance.sum(), model(x, edge_index)[:, 1].sum(), atol=1e-4, rtol=1e-4)


def test_gat_with_constant_attention_conserves_without_biases(graph):
    x, edge_index = graph
    model = make("gat", bias=False)
    explanation = relprop.explain(model, x, target=1, composite="cp_lrp", strict=True,
                                  forward=lambda m, z: m(z, edge_index))
    torch.testing.assert_close(explanation.relevance.sum(), model(x, edge_index)[:, 1].sum(), atol=1e-4, rtol=1e-4)


def test_gat_attention_is_ruled_as_the_composites_softmax(graph):
    x, edge_index = graph
    rules = {row.rule for row in relprop.LRP(make("gat", bias=True), "attnlrp", strict=True,
                                             forward=lambda m, z: m(z, edge_index)).report(x, 1).rows}
    assert "Gradient (AttnLRP edge softmax)" in rules and "Gradient (sum aggregation)" in rules


@pytest.mark.parametrize("kind,rule", [("sage_max", "Gradient (max aggregation, winner takes all)"),
                                       ("sage_sum", "Gradient (sum aggregation)")])
def test_report_names_the_aggregation_rule(graph, kind, rule):
    x, edge_index = graph
    rows = relprop.LRP(make(kind, bias=True), strict=True, forward=lambda m, z: m(z, edge_index)).report(x, 1).rows
    assert rule in {row.rule for row in rows}


def test_gine_gives_node_and_edge_features_their_gradient_times_input(graph):
    x, edge_index = graph
    edge_attr = torch.randn(EDGES, 3)
    torch.manual_seed(2)
    conv = GINEConv(mlp(FEATURES, bias=False), edge_dim=3)
    with torch.no_grad():
        conv.lin.bias.zero_()
    nodes, edges, explanation = explain_graph(conv, x, edge_index, edge_attr, target=1, composite="epsilon",
                                              epsilon=1e-12, strict=True)
    leaf_x, leaf_e = x.clone().requires_grad_(True), edge_attr.clone().requires_grad_(True)
    conv(leaf_x, edge_index, leaf_e)[:, 1].sum().backward()
    torch.testing.assert_close(nodes, leaf_x.grad * x, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(edges, leaf_e.grad * edge_attr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(nodes.sum() + edges.sum(), explanation.explained.sum(), atol=1e-4, rtol=1e-4)


def test_gat_with_edge_features_gives_them_relevance_under_strict(graph):
    x, edge_index = graph
    edge_attr = torch.randn(EDGES, 2)
    torch.manual_seed(3)
    conv = GATConv(FEATURES, 3, heads=2, edge_dim=2)
    nodes, edges, _ = explain_graph(conv, x, edge_index, edge_attr, target=0, node=3, composite="attnlrp",
                                    strict=True)
    assert nodes.shape == x.shape and edges.shape == edge_attr.shape
    assert edges.abs().sum() > 0 and torch.isfinite(edges).all()


@pytest.mark.parametrize("layer", ["gatv2", "transformer", "sage_min", "sage_softmax", "edge", "cheb"])
def test_further_layers_run_strict(graph, layer):
    from torch_geometric.nn import ChebConv, EdgeConv, GATv2Conv, TransformerConv

    x, edge_index = graph
    torch.manual_seed(6)
    conv = {"gatv2": lambda: GATv2Conv(FEATURES, 3, heads=2), "transformer": lambda: TransformerConv(FEATURES, 3),
            "sage_min": lambda: SAGEConv(FEATURES, 3, aggr="min"),
            "sage_softmax": lambda: SAGEConv(FEATURES, 3, aggr="softmax"),
            "edge": lambda: EdgeConv(torch.nn.Linear(2 * FEATURES, 3)), "cheb": lambda: ChebConv(FEATURES, 3, K=2)}
    explanation = relprop.explain(conv[layer](), x, target=0, strict=True, forward=lambda m, z: m(z, edge_index))
    assert torch.isfinite(explanation.relevance).all() and explanation.relevance.abs().sum() > 0


@pytest.mark.parametrize("readout", ["add", "mean", "max"])
def test_graph_readouts_run_strict_and_explain_each_graph(graph, readout):
    from torch_geometric import nn

    x, edge_index = graph
    pool = getattr(nn, f"global_{readout}_pool")
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    edge_index = edge_index[:, batch[edge_index[0]] == batch[edge_index[1]]]  # two separate graphs
    conv = GCNConv(FEATURES, 3)
    nodes, _, explanation = explain_graph(conv, x, edge_index, target=1, strict=True,
                                          forward=lambda m, z, e, _: pool(m(z, e), batch)[1:])  # graph 1 only
    assert (nodes[:3] == 0).all() and (nodes[3:] != 0).any()
    assert torch.isfinite(nodes).all()
