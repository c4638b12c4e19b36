import pytest
import torch

import relprop
from relprop.concepts import concept_relevance, top_concepts
from tests.concepts.nets import vgg
from tests.models import with_biases

pytestmark = pytest.mark.usefixtures("one_thread")


def test_channel_relevance_is_the_recorded_relevance_summed_over_positions():
    model = vgg()
    x = torch.randn(2, 3, 16, 16)
    lrp = relprop.LRP(model)
    sums = concept_relevance(lrp, x, 1, ["3", "10"])
    layers = lrp(x, 1, record=["3", "10"]).layers
    expected = torch.stack([torch.stack([layers["3"][n, c].sum() for c in range(8)]) for n in range(2)])
    torch.testing.assert_close(sums["3"], expected)
    torch.testing.assert_close(sums["10"], layers["10"])  # dense: one value per neuron


def test_token_layers_keep_their_features_in_the_last_dim():
    torch.manual_seed(0)
    model = with_biases(torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Flatten(),
                                            torch.nn.Linear(30, 3))).eval()
    x = torch.randn(2, 5, 4)  # 5 tokens of 4 features
    lrp = relprop.LRP(model)
    sums = concept_relevance(lrp, x, 0, "0")
    torch.testing.assert_close(sums["0"], lrp(x, 0, record=["0"]).layers["0"].sum(1))


def test_top_concepts_are_the_most_relevant_channels_per_sample():
    values, channels = top_concepts(torch.tensor([[0.1, 3.0, -2.0, 1.0], [5.0, 0.0, 0.2, 0.3]]), k=2)
    assert channels.tolist() == [[1, 3], [0, 3]]
    torch.testing.assert_close(values, torch.tensor([[3.0, 1.0], [5.0, 0.3]]))
    with pytest.raises(ValueError, match="sample, channel"):
        top_concepts(torch.zeros(3))


def test_a_layer_that_does_not_run_is_named():
    with pytest.raises(ValueError, match="^the model has no module named '33'; did you mean '3'"):
        concept_relevance(relprop.LRP(vgg()), torch.randn(1, 3, 16, 16), 0, ["33"])
