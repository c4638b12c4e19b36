"""Same conditional heatmaps as zennit-crp (an optional oracle, never imported by relprop) with epsilon_plus_flat."""
import pytest
import torch

import relprop
from relprop.concepts import conditional
from tests.concepts.nets import vgg

crp = pytest.importorskip("crp.attribution")
from zennit.composites import EpsilonPlusFlat  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("layer", ["3", "6", "9"])
def test_conditional_heatmaps_match_zennit_crp(layer):
    model = vgg()
    x = torch.randn(1, 3, 16, 16)
    channels = 16 if layer == "9" else 8
    conditions = [{"y": [2], layer: [c]} for c in range(channels)] + [{"y": [1], layer: [0, 3]}]
    attribution = crp.CondAttribution(model)
    expected = attribution(x.clone().requires_grad_(True), conditions, EpsilonPlusFlat()).heatmap
    ours = conditional(relprop.LRP(model, "epsilon_plus_flat"), x, None,
                       [{"y": c["y"][0], layer: c[layer]} for c in conditions])
    got = ours.relevance[:, 0].sum(1)  # zennit-crp's heatmaps are summed over the input's channels
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=2e-5)
