"""GNN-LRP relevant walks against a brute-force reference (one masked LRP backward per walk), and their total:
node-level models (one or several end nodes) and graph classification (a global pooling readout)."""
import itertools

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv, global_add_pool, global_max_pool, global_mean_pool

import relprop
from relprop.gnn import Walks, explain_graph, relevant_walks

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


class GraphNet(Net):
    """Graph classification: message passing, a global pooling readout over the batch vector, a linear head."""

    def __init__(self, convs, pool):
        super().__init__(convs)
        self.pool = pool

    def forward(self, x, edge_index, batch):
        for conv in self.convs:
            x = conv(x, edge_index).relu()
        return self.head(self.pool(x, batch))


POOLS = {"add": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}


def model(kind, layers, pool=None, bias=True):
    torch.manual_seed(4)
    make = {"gcn": lambda: GCNConv(FEATURES, FEATURES, bias=bias),
            "gin": lambda: GINConv(torch.nn.Linear(FEATURES, FEATURES, bias=bias), train_eps=True),
            "sage": lambda: SAGEConv(FEATURES, FEATURES, aggr="max", bias=bias),
            "gat": lambda: GATConv(FEATURES, FEATURES, bias=bias)}[kind]
    convs = [make() for _ in range(layers)]
    net = (Net(convs) if pool is None else GraphNet(convs, POOLS[pool])).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.3, 0.3) if bias else parameter.zero_()
    return net


@pytest.fixture
def graph():
    torch.manual_seed(5)
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 2, 0], [1, 0, 2, 3, 4, 5, 0, 4, 3]])
    return torch.randn(NODES, FEATURES) + 0.5, edge_index


def brute_force(net, x, edge_index, layers, node, target, composite="epsilon"):
    """Every walk ending at node (None: at any node, for a graph-level model), each by its own LRP run with the
    relevance of layer l kept at the walk's v_l; a graph-level model explains its one graph's output."""
    steps = {(int(s), int(t)) for s, t in edge_index.t()} | {(v, v) for v in range(NODES)}
    walks = {}
    for walk in itertools.product(range(NODES), repeat=len(layers) + 1):
        if node is not None and walk[-1] != node or any((a, b) not in steps for a, b in zip(walk, walk[1:])):
            continue
        handles = []
        for layer, keep in zip(layers, walk[1:]):
            def hook(module, args, output, keep=keep):
                mask = torch.zeros(NODES, 1)
                mask[keep] = 1
                output.register_hook(lambda grad: grad * mask)
            handles.append(net.get_submodule(layer).register_forward_hook(hook))
        try:
            if isinstance(net, GraphNet):  # the whole graph is one sample
                relevance = relprop.explain(net, x[None], target, composite=composite, strict=True,
                                            forward=lambda m, z: m(z[0], edge_index, torch.zeros(NODES, dtype=int))
                                            ).relevance[0]
            else:  # nodes are the batch; the mask at the last layer keeps node's output only
                relevance = relprop.explain(net, x, target, composite=composite, strict=True,
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
    assert_walks_match(found, expected)
    assert (found.relevance[:-1] >= found.relevance[1:]).all()  # most relevant first


def assert_walks_match(found, expected):
    assert len(found.walks) == len(expected)
    for walk, relevance in zip(found.walks.tolist(), found.relevance.tolist()):
        assert relevance == pytest.approx(expected[tuple(walk)], abs=1e-5, rel=1e-4)


@pytest.mark.parametrize("kind,pool", [("gcn", "add"), ("gcn", "mean"), ("gcn", "max"), ("gin", "add"),
                                       ("gin", "max"), ("gat", "mean"), ("gat", "add")])
def test_graph_classification_walks_equal_one_backward_per_walk_on_the_graph_output(graph, kind, pool):
    x, edge_index = graph
    net = model(kind, 2, pool)
    names = ["convs.0", "convs.1"]
    expected = brute_force(net, x, edge_index, names, node=None, target=1)
    found = relevant_walks(net, x, edge_index, names, target=1, level="graph", composite="epsilon", strict=True,
                           batch_size=5)
    assert_walks_match(found, expected)
    assert set(found.walks[:, -1].tolist()) == set(range(NODES))  # walks end at every node


def test_graph_walks_ending_at_chosen_nodes_are_those_walks_of_the_whole_graph(graph):
    x, edge_index = graph
    net = model("gin", 2, "mean")
    everything = relevant_walks(net, x, edge_index, ["convs.0", "convs.1"], target=0, level="graph")
    chosen = relevant_walks(net, x, edge_index, ["convs.0", "convs.1"], node=[1, 4], target=0, level="graph")
    pairs = zip(everything.walks.tolist(), everything.relevance.tolist())
    expected = {tuple(walk): relevance for walk, relevance in pairs if walk[-1] in (1, 4)}
    assert_walks_match(chosen, expected)


@pytest.mark.parametrize("kind", ["gcn", "gin", "gat"])
def test_walks_of_several_end_nodes_each_explain_their_own_nodes_output(graph, kind):
    x, edge_index = graph
    net = model(kind, 2)
    names = ["convs.0", "convs.1"]
    expected = {**brute_force(net, x, edge_index, names, node=2, target=0),
                **brute_force(net, x, edge_index, names, node=4, target=1)}
    found = relevant_walks(net, x, edge_index, names, node=[2, 4], target=[0, 1], composite="epsilon", strict=True,
                           batch_size=4)
    assert_walks_match(found, expected)


@pytest.mark.parametrize("kind,pool,composite", [("gcn", "add", "epsilon"), ("gin", "mean", "epsilon"),
                                                 ("gcn", "max", "epsilon"), ("gat", "add", "cp_lrp")])
def test_graph_walks_sum_to_the_explained_output_less_what_biases_absorb(graph, kind, pool, composite):
    x, edge_index = graph
    batch = torch.zeros(NODES, dtype=torch.long)

    def graph_output(net):
        return relprop.explain(net, x[None], 1, composite=composite, strict=True,
                               forward=lambda m, z: m(z[0], edge_index, batch))

    with_biases = model(kind, 2, pool)
    walks = relevant_walks(with_biases, x, edge_index, ["convs.0", "convs.1"], target=1, level="graph",
                           composite=composite)
    plain = graph_output(with_biases)
    torch.testing.assert_close(walks.relevance.sum(), plain.relevance.sum(), atol=1e-5, rtol=1e-4)
    assert abs(float(plain.delta[0])) > 1e-2  # the biases absorb a share here ...
    bias_free = model(kind, 2, pool, bias=False)
    walks = relevant_walks(bias_free, x, edge_index, ["convs.0", "convs.1"], target=1, level="graph",
                           composite=composite)
    explained = graph_output(bias_free).explained[0]  # ... and without them the walks share out the whole output
    torch.testing.assert_close(walks.relevance.sum(), explained, atol=1e-5, rtol=1e-4)


def test_the_predicted_class_is_explained_when_target_is_none(graph):
    x, edge_index = graph
    net = model("gcn", 2, "add")
    predicted = int(net(x, edge_index, torch.zeros(NODES, dtype=torch.long)).argmax())
    found = relevant_walks(net, x, edge_index, ["convs.0", "convs.1"], level="graph")
    given = relevant_walks(net, x, edge_index, ["convs.0", "convs.1"], target=predicted, level="graph")
    torch.testing.assert_close(found.relevance, given.relevance)


class Shared(torch.nn.Module):
    """One message-passing layer applied twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.conv = GCNConv(FEATURES, FEATURES)

    def forward(self, x, edge_index):
        return self.conv(self.conv(x, edge_index).relu(), edge_index)


def test_a_layer_used_at_two_steps_is_an_error_saying_to_give_each_step_its_own_module(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match="ran more than once.*its own module"):
        relevant_walks(Shared().eval(), x, edge_index, ["conv"], node=0, target=0)
    with pytest.raises(ValueError, match="name a module twice"):
        relevant_walks(Shared().eval(), x, edge_index, ["conv", "conv"], node=0, target=0)


def test_layers_listed_out_of_order_are_an_error(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match="in the order they run"):
        relevant_walks(model("gcn", 2), x, edge_index, ["convs.1", "convs.0"], node=0, target=0)


def test_a_layer_after_the_readout_is_an_error_naming_the_readout(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match="'head' returned 1 rows.*before the readout"):
        relevant_walks(model("gcn", 1, "add"), x, edge_index, ["convs.0", "head"], target=0, level="graph",
                       batch_size=1)


def test_the_level_must_match_the_models_output(graph):
    x, edge_index = graph
    with pytest.raises(ValueError, match="level='graph'"):
        relevant_walks(model("gcn", 2, "add"), x, edge_index, ["convs.0", "convs.1"], node=0, target=0,
                       forward=lambda m, z, edges: m(z, edges, torch.zeros(len(z), dtype=torch.long)))
    with pytest.raises(ValueError, match="one row per graph, pooled by the batch vector"):
        relevant_walks(model("gcn", 2), x, edge_index, ["convs.0", "convs.1"], target=0, level="graph",
                       forward=lambda m, z, edges, batch: m(z, edges).sum(0, keepdim=True))
    with pytest.raises(ValueError, match="node is missing"):
        relevant_walks(model("gcn", 2), x, edge_index, ["convs.0", "convs.1"], target=0)
    with pytest.raises(ValueError, match="one class per end node"):
        relevant_walks(model("gcn", 2), x, edge_index, ["convs.0", "convs.1"], node=[0, 1], target=[0])


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
