import math

import pytest
import torch
import torch.nn as nn
from captum.attr import Occlusion as CaptumOcclusion

from relprop.attribution import Occlusion

from .models import captum, close, vgg_style


class Counting(nn.Module):
    """Counts forward passes of the model it wraps."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize("window, stride", [((3, 4, 4), (3, 4, 4)), ((1, 5, 3), (1, 4, 2)), ((3, 16, 16), 1)])
def test_occlusion_matches_captum_including_windows_cut_at_the_edge(image, window, stride):
    model = vgg_style()
    ours = Occlusion(model, window, stride=stride)(image, target=[0, 1, 2])
    theirs = captum(CaptumOcclusion(model), image, window, strides=stride, target=[0, 1, 2])
    close(ours.relevance, theirs)
    assert torch.isnan(ours.delta).all()


def test_a_window_over_the_last_dimensions_covers_the_leading_ones_whole(image):
    model = vgg_style()
    baseline = torch.randn_like(image)
    ours = Occlusion(model, (6, 6), stride=5)(image, target=3, baseline=baseline)
    theirs = captum(CaptumOcclusion(model), image, (3, 6, 6), strides=(3, 5, 5), target=3, baselines=baseline)
    close(ours.relevance, theirs)


def test_windows_run_batched_and_the_batch_size_does_not_change_the_result(image):
    model = Counting(vgg_style())
    whole = Occlusion(model, (4, 4), incremental=False)(image, target=1)  # 16 windows x 3 samples: one clean pass, one occluded
    assert model.calls == 2
    for size in (2, 5, 48):
        model.calls = 0
        close(Occlusion(model, (4, 4), batch_size=size, incremental=False)(image, target=1).relevance, whole.relevance)
        assert model.calls == math.ceil(3 / size) + math.ceil(16 * 3 / size)


def test_small_windows_run_as_incremental_passes_with_the_plain_passes_result(image):
    model = Counting(vgg_style())
    plain = Occlusion(model, (4, 4), incremental=False)(image, target=1)
    model.calls = 0
    ours = Occlusion(model, (4, 4))(image, target=1)
    assert model.calls == 1 + 1 + 16  # the clean output, the base pass, one incremental pass per window
    close(ours.relevance, plain.relevance)
    model.calls = 0
    Occlusion(model, (12, 12))(image, target=1)  # over a quarter of the image: batched plain passes
    assert model.calls == 2


def test_occlusion_explains_the_target_chosen_at_the_clean_input(image):
    model = vgg_style()
    explanation = Occlusion(model, (8, 8))(image)
    assert explanation.target.tolist() == model(image).argmax(1).tolist()
    close(explanation.explained, model(image).detach()[range(3), explanation.target])


def test_bad_windows_say_what_to_do(image):
    model = vgg_style()
    with pytest.raises(ValueError, match=r"larger than a sample \(3, 16, 16\) in dimension 2 \(20 > 16\)"):
        Occlusion(model, (20, 4))(image)
    with pytest.raises(ValueError, match="at most one size per sample dimension"):
        Occlusion(model, (1, 3, 4, 4))(image)
    with pytest.raises(ValueError, match="stride .* is larger than window"):
        Occlusion(model, (4, 4), stride=5)
    with pytest.raises(ValueError, match="one stride per window dimension"):
        Occlusion(model, (4, 4), stride=(2, 2, 2))
    with pytest.raises(ValueError, match="positive int"):
        Occlusion(model, (0, 4))
    with pytest.raises(ValueError, match="baseline has shape"):
        Occlusion(model, (4, 4))(image, baseline=torch.zeros(3, 8, 8))
