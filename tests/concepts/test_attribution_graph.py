import pytest
import torch

import relprop
from relprop.concepts import attribution_graph
from tests.concepts.nets import vgg

pytestmark = pytest.mark.usefixtures("one_thread")


def test_edges_are_the_lower_layer_relevance_of_the_split_network_through_one_upper_channel():
    model = vgg()
    x = torch.randn(1, 3, 16, 16)
    lrp = relprop.LRP(model, "epsilon_plus", canonizers=None)
    graph = attribution_graph(lrp, x, 2, upper="6", lower="3", channels=[0, 4, 7], top=3)
    a3 = model[:4](x).detach()
    a6 = model[4:7](a3).detach()
    r6 = relprop.LRP(model[7:], "epsilon_plus", canonizers=None)(a6, 2).relevance
    for position, c in enumerate([0, 4, 7]):
        kept = r6 * (torch.arange(8) == c).float().view(1, -1, 1, 1)
        r3 = relprop.LRP(model[4:7], "epsilon_plus", canonizers=None)(a3, kept).relevance
        torch.testing.assert_close(graph.table[position], r3[0].sum((1, 2)), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(graph.upper_relevance[position], kept.sum(), atol=1e-6, rtol=1e-4)
        assert graph.top[position].tolist() == r3[0].sum((1, 2)).topk(3).indices.tolist()
    rows = graph.rows()
    assert len(rows) == 9 and rows[0]["upper"] == 0
    assert rows[0]["share"] == pytest.approx(rows[0]["relevance"] / float(graph.upper_relevance[0]))
    svg = graph.svg()
    assert svg.startswith("<svg") and svg.count("<line") == 9 and svg.count("<circle") == 3 + len(
        set(graph.top.flatten().tolist()))


def test_all_upper_channels_together_give_the_plain_lower_layer_relevance():
    model = vgg()
    x = torch.randn(1, 3, 16, 16)
    lrp = relprop.LRP(model)
    graph = attribution_graph(lrp, x, 1, upper="9", lower="6", channels=range(16))
    plain = lrp(x, 1, record=["6"]).layers["6"][0].sum((1, 2))
    torch.testing.assert_close(graph.table.sum(0), plain, atol=1e-6, rtol=1e-4)


def test_the_default_upper_channels_are_the_top_concepts():
    model = vgg()
    x = torch.randn(1, 3, 16, 16)
    lrp = relprop.LRP(model)
    graph = attribution_graph(lrp, x, 1, upper="6", lower="3", top=2)
    expected = lrp(x, 1, record=["6"]).layers["6"][0].sum((1, 2)).topk(2).indices.tolist()
    assert graph.upper_channels == expected


def test_layers_in_the_wrong_order_or_a_batch_are_refused():
    lrp = relprop.LRP(vgg())
    with pytest.raises(ValueError, match="runs after"):
        attribution_graph(lrp, torch.randn(1, 3, 16, 16), 0, upper="3", lower="6", channels=[1])
    with pytest.raises(ValueError, match="one sample"):
        attribution_graph(lrp, torch.randn(2, 3, 16, 16), 0, upper="6", lower="3")
    with pytest.raises(ValueError, match="did you mean"):
        attribution_graph(lrp, torch.randn(1, 3, 16, 16), 0, upper="6", lower="33")
