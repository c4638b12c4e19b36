"""Batch mixing: relprop warns when the samples of a batch exchange information in the forward (graph nodes as the
batch, batch norm in training mode, attention or a mean over the batch), and stays silent on models whose samples
are independent, however they move the batch axis."""
import warnings

import pytest
import torch
import torchvision
from torch import nn

import relprop
from relprop.gnn import explain_graph, relevant_walks

torch_geometric = pytest.importorskip("torch_geometric")
from torch_geometric.nn import GATConv, GCNConv  # noqa: E402


def mixing(model, x, **options):
    """The batch-mixing warnings explaining x gives (other warnings pass)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relprop.explain(model, x, target=1, **options)
    return [str(w.message) for w in caught if issubclass(w.category, relprop.BatchMixingWarning)]


def independent(model, x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.BatchMixingWarning)
        return relprop.explain(model, x, target=1, **options)


class GCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = GCNConv(4, 8), GCNConv(8, 3)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


class AdjacencyGCN(nn.Module):
    """A GCN in plain torch: A relu(A X W1) W2 with a fixed (dense or sparse) adjacency."""

    def __init__(self, adjacency):
        super().__init__()
        self.adjacency, self.first, self.second = adjacency, nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.adjacency @ self.second((self.adjacency @ self.first(x)).relu())


def graph(nodes=6, edges=12):
    edge_index = torch.randint(0, nodes, (2, edges))
    edge_index[1, :nodes - 1] = torch.arange(1, nodes)  # every node but the first receives from another
    edge_index[0, :nodes - 1] = torch.arange(nodes - 1)
    return torch.randn(nodes, 4), edge_index


# ---- models whose samples exchange information warn ---------------------------------------------------------------
def test_a_graph_network_run_on_its_nodes_as_the_batch_warns_and_points_to_explain_graph():
    x, edge_index = graph()
    model = GCN().eval()
    (message,) = mixing(model, x, forward=lambda m, z: m(z, edge_index))
    assert "scatter_add_ in module 'conv1.aggr_module'" in message
    assert "it adds rows of one sample into another's" in message
    assert "explain_graph(model, x, edge_index, node=i)" in message and "delta[i] is no conservation check" in message
    # what the warning says: per node nothing is conserved, the batch's total is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", relprop.BatchMixingWarning)
        rows = relprop.explain(model, x, target=1, composite="epsilon", epsilon=0.0, zero_bias=True,
                               forward=lambda m, z: m(z, edge_index))
    assert float(rows.delta.abs().max()) > 100 * float(rows.delta.sum().abs())
    assert rows.details["batch_mixing"].startswith("scatter_add_ in module 'conv1.aggr_module' (SumAggregation)")
    # one node's output explained on its own: no warning, its relevance conserves its output
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.BatchMixingWarning)
        nodes, _, one = explain_graph(model, x, edge_index, target=1, node=2, composite="epsilon", epsilon=0.0,
                                      zero_bias=True)
    torch.testing.assert_close(nodes.sum(), one.explained[0], rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.BatchMixingWarning)
        relevant_walks(model, x, edge_index, layers=["conv1", "conv2"], node=2, target=1)


def test_attention_layers_of_a_graph_network_warn():
    x, edge_index = graph()
    assert len(mixing(GATConv(4, 3).eval(), x, forward=lambda m, z: m(z, edge_index))) == 1


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_a_plain_torch_gcn_warns_at_its_adjacency_product(sparse):
    adjacency = (torch.rand(6, 6) > 0.5).float() + torch.eye(6)
    (message,) = mixing(AdjacencyGCN(adjacency.to_sparse() if sparse else adjacency).eval(), torch.randn(6, 4))
    assert "matmul in the model (AdjacencyGCN): it sums (a matrix product) over the batch axis" in message


def test_batch_norm_in_training_mode_warns_and_in_eval_mode_not():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    (message,) = mixing(model.train(), torch.randn(5, 4))
    assert "batch_norm in module '1' (BatchNorm1d): batch norm in training mode" in message
    independent(model.eval(), torch.randn(5, 4))
    assert len(mixing(torchvision.models.resnet18(num_classes=3).train(), torch.randn(2, 3, 32, 32))) == 1


class AttentionOverTheBatch(nn.Module):
    """Each sample attends to every sample of the batch (a set model)."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused
        self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        if self.fused:
            return self.head(self.attention(x[None], x[None], x[None])[0][0])
        scores = self.query(x) @ self.key(x).T
        return self.head(torch.softmax(scores, -1) @ self.value(x))


@pytest.mark.parametrize("fused", [False, True], ids=["hand-written", "nn.MultiheadAttention"])
def test_attention_over_the_batch_warns(fused):
    (message,) = mixing(AttentionOverTheBatch(fused).eval(), torch.randn(5, 4))
    assert "it pairs rows of different samples" in message


@pytest.mark.parametrize("forward", [
    lambda x: x - x.mean(0), lambda x: x / x.norm(), lambda x: torch.softmax(x, 0),
    lambda x: x + x.T.sum(1, keepdim=True).T, lambda x: x[torch.tensor([1, 0, 2, 3])] + x,
    lambda x: x.unsqueeze(1) * x, lambda x: torch.einsum("nf,mf->nm", x, x), lambda x: x @ x,
    lambda x: nn.functional.layer_norm(x.T, (4,)).T,
], ids=["mean", "norm", "softmax", "transposed sum", "permuted pairs", "broadcast pairs", "einsum", "x @ x",
        "layer norm"])
def test_ops_over_the_batch_axis_warn(forward):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            return forward(self.linear(x))[:, :2]

    assert len(mixing(Model().eval(), torch.randn(4, 4))) == 1


# ---- models whose samples stay apart do not warn ------------------------------------------------------------------
class Tokens(nn.Module):
    """A transformer over tokens, (batch, tokens, features) in, the batch kept apart."""

    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's nested-tensor note for batch_first=False
            self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        if self.batch_first:
            return self.head(self.encoder(x).mean(1))
        return self.head(self.encoder(x.transpose(0, 1)).mean(0))


class HandAttention(nn.Module):
    """Attention over tokens written out: heads by view and permute, scores by matmul and einsum, SDPA."""

    def __init__(self):
        super().__init__()
        self.qkv, self.head = nn.Linear(8, 24), nn.Linear(8, 2)

    def forward(self, x):
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, 2, 4).permute(2, 0, 3, 1, 4)
        mixed = torch.softmax(q @ k.transpose(-2, -1) / 2, -1) @ v
        mixed = mixed + torch.einsum("bhts,bhsd->bhtd", torch.softmax(torch.einsum("bhtd,bhsd->bhts", q, k), -1), v)
        mixed = mixed + nn.functional.scaled_dot_product_attention(q, k, v)
        return self.head(mixed.transpose(1, 2).reshape(batch, tokens, 8)[:, 0])


class Recurrent(nn.Module):
    def __init__(self, batch_first=True, packed=False):
        super().__init__()
        self.batch_first, self.packed = batch_first, packed
        self.lstm = nn.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=batch_first)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        if self.packed:  # sorting by length permutes the batch, and unpacking puts it back
            x = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 7, 3]), batch_first=True, enforce_sorted=False)
        elif not self.batch_first:
            x = x.transpose(0, 1)
        _, (h, _) = self.lstm(x)
        return self.head(torch.cat([h[-2], h[-1]], 1))


class Reshuffled(nn.Module):
    """Moves the batch axis about (transposes, stacks, unbinds, permutations undone) without mixing samples, in a
    batch of two as wide as its features, where a dim's size does not tell the batch axis."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        square = self.linear(x)  # (2, 2): batch and features the same size
        stacked = torch.stack([square, square * 2]).sum(0)  # sums the stack, not the batch
        turned = stacked.T.softmax(0).T + stacked.t().sum(0, keepdim=True).t()  # over features, twice
        order = torch.tensor([1, 0])
        branches = torch.stack([turned, square], 1).sum(1) + torch.stack(square.unbind(1), 1).select(1, 0)[:, None]
        return branches[order][order] + square[..., :1] + square.unsqueeze(0).squeeze(0)


@pytest.mark.parametrize("make, x", [
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), (5, 4)),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)),
     (3, 3, 8, 8)),
    (lambda: torchvision.models.resnet18(num_classes=3), (2, 3, 32, 32)),
    (lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                  hidden_dim=16, mlp_dim=32, num_classes=3), (2, 3, 32, 32)),
    (lambda: Tokens(batch_first=True), (3, 5, 16)),
    (lambda: Tokens(batch_first=False), (3, 5, 16)),
    (HandAttention, (3, 4, 8)),
    (Recurrent, (3, 7, 3)),
    (lambda: Recurrent(batch_first=False), (3, 7, 3)),
    (lambda: Recurrent(packed=True), (3, 7, 3)),
    (Reshuffled, (2, 2)),
], ids=["mlp", "cnn", "resnet18 eval", "vit", "transformer", "transformer tokens first", "hand attention",
        "lstm", "lstm tokens first", "lstm packed", "batch axis moved about"])
def test_models_whose_samples_stay_apart_do_not_warn(make, x):
    assert "batch_mixing" not in independent(make().eval(), torch.randn(*x)).details


def test_a_graph_whose_nodes_exchange_nothing_and_a_batch_of_one_do_not_warn():
    self_loops = torch.arange(6).repeat(2, 1)
    independent(GCN().eval(), torch.randn(6, 4), forward=lambda m, z: m(z, self_loops))
    independent(AdjacencyGCN(torch.ones(1, 1)).eval(), torch.randn(1, 4))
