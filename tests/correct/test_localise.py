import pytest
import torch

from relprop import correct
from relprop.correct import localise

from . import planted


def test_masks_keep_pixels_whose_smoothed_positive_relevance_reaches_the_threshold():
    relevance = torch.zeros(1, 2, 6, 6)
    relevance[0, 0, 1, 1] = 9.0  # one strong pixel: smoothing spreads it over its 3 x 3 neighbourhood
    relevance[0, 1, 4, 4] = -5.0  # negative relevance never counts
    smooth = torch.nn.functional.avg_pool2d(relevance.sum(1, keepdim=True).clamp(min=0), 3, 1, 1,
                                            count_include_pad=False)
    expected = (smooth >= 0.5 * smooth.max()).float()
    torch.testing.assert_close(localise.masks(relevance, 0.5), expected)
    assert localise.masks(torch.zeros(1, 1, 4, 4)).sum() == 0  # no positive relevance: an empty mask
    with pytest.raises(ValueError, match="threshold"):
        localise.masks(relevance, 0.0)


def test_the_cavs_conditional_relevance_finds_the_planted_artifact():
    net = planted.trained()
    images, labels, marked = planted.generate(300, 3)
    cav = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    x = planted.add_artifact(planted.unmarked(20, 5)[0])
    found = localise.localise(net, x, cav)
    truth = planted.mask().expand_as(found[:, 0])[:, None]
    overlap = (found * truth).flatten(1).sum(1) / ((found + truth) > 0).float().flatten(1).sum(1)
    assert overlap.mean() > 0.5
