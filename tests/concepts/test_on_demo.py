"""The demo CNN's concepts for the deciding object are found: measured like the demo's share (demo/test_showcase.py)."""
import pytest
import torch

import relprop
from relprop.concepts import concept_relevance, conditional, top_concepts
from relprop.demo import generate, load, normalize
from relprop.tour.showcase import positive_share_in_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_top_concepts_heatmaps_put_most_positive_relevance_on_the_deciding_object():
    model = load()
    images, labels, masks = generate(8, seed=11)
    x, labels, masks = normalize(torch.from_numpy(images)), torch.from_numpy(labels), torch.from_numpy(masks).float()
    lrp = relprop.LRP(model, "epsilon_plus_flat")
    layer = "features.8"  # the last convolution: 64 concepts
    sums = concept_relevance(lrp, x, labels, [layer])[layer]
    _, channels = top_concepts(sums, 3)
    shares = torch.stack([
        positive_share_in_mask(conditional(lrp, x[i:i + 1], int(labels[i]), [{layer: [int(c)]} for c in channels[i]])
                               .relevance[:, 0], masks[i:i + 1].expand(3, -1, -1))
        for i in range(len(x))])  # (image, rank)
    area = float(masks.mean())  # objects cover about 7% of the image
    for rank, share in enumerate(shares.mean(0).tolist()):
        assert share > 0.6 and share > 5 * area, f"concept of rank {rank}: {share:.2f} of its positive relevance"
    assert float(shares.min()) > 0.3
