import pytest
import torch

import relprop
from relprop.concepts import conditional
from tests.concepts.nets import vgg
from tests.models import CNN1d, CNN3d, MLP, TinyResNet, UNet, with_biases

pytestmark = pytest.mark.usefixtures("one_thread")


def split_reference(model, x, target, layer: int, mask):
    """Relevance through the masked channels of model[layer], by hand: LRP of the top part from that layer's output,
    the mask applied to its relevance, then LRP of the bottom part started from that relevance."""
    bottom, top = model[:layer + 1], model[layer + 1:]
    activation = bottom(x).detach()
    upper = relprop.LRP(top, "epsilon_plus", canonizers=None)(activation, target).relevance
    shape = [1] * activation.dim()
    shape[1] = -1
    return relprop.LRP(bottom, "epsilon_plus", canonizers=None)(x, upper * mask.reshape(shape)).relevance


@pytest.mark.parametrize("layer", [3, 6, 9])
def test_each_channel_heatmap_equals_lrp_of_the_split_network_with_that_channel_kept(layer):
    model = vgg()
    x = torch.randn(2, 3, 16, 16)
    channels = model[layer](model[:layer](x)).shape[1]
    lrp = relprop.LRP(model, "epsilon_plus", canonizers=None)
    result = conditional(lrp, x, 1, [{str(layer): [c]} for c in range(channels)] + [{str(layer): [0, 2], "y": 3}])
    for c in range(channels):
        mask = torch.zeros(channels)
        mask[c] = 1
        expected = split_reference(model, x, 1, layer, mask)
        torch.testing.assert_close(result.relevance[c], expected, atol=1e-6, rtol=1e-4)
    mask = torch.zeros(channels)
    mask[[0, 2]] = 1
    torch.testing.assert_close(result.relevance[-1], split_reference(model, x, 3, layer, mask), atol=1e-6, rtol=1e-4)


def test_two_layers_in_one_condition_follow_the_path_through_both():
    model = vgg()
    x = torch.randn(1, 3, 16, 16)
    lrp = relprop.LRP(model, "epsilon_plus", canonizers=None)
    result = conditional(lrp, x, 2, {"6": [1], "3": [4, 5]})
    # by hand: top from layer 6 masked to channel 1, middle 4..6 from there masked to 4 and 5, bottom 0..3
    a3 = model[:4](x).detach()
    a6 = model[4:7](a3).detach()
    r6 = relprop.LRP(model[7:], "epsilon_plus", canonizers=None)(a6, 2).relevance
    r6 = r6 * (torch.arange(8) == 1).float().view(1, -1, 1, 1)
    r3 = relprop.LRP(model[4:7], "epsilon_plus", canonizers=None)(a3, r6).relevance
    r3 = r3 * torch.isin(torch.arange(8), torch.tensor([4, 5])).float().view(1, -1, 1, 1)
    expected = relprop.LRP(model[:4], "epsilon_plus", canonizers=None)(x, r3).relevance
    torch.testing.assert_close(result.relevance[0], expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(result.explained[0], r3.sum().reshape(1), atol=1e-6, rtol=1e-4)


CORE = [  # (model, input, a layer that every path from input to output crosses)
    (lambda: vgg(), (2, 3, 16, 16), "6"),
    (lambda: MLP(), (3, 8), "2"),
    (lambda: CNN1d(), (2, 2, 16), "4"),
    (lambda: CNN3d(), (2, 1, 8, 8, 8), "4"),
    (lambda: TinyResNet(), (2, 3, 8, 8), "layer1"),
    (lambda: UNet(), (1, 3, 8, 8), "dec1"),
]


@pytest.mark.parametrize("make, shape, layer", CORE)
def test_heatmaps_of_all_channels_of_a_layer_add_up_to_the_plain_explanation(make, shape, layer):
    torch.manual_seed(0)
    model = with_biases(make()).eval()
    x = torch.randn(shape)
    lrp = relprop.LRP(model)
    plain = lrp(x, 0)
    recorded = relprop.LRP(model, record=[layer])(x, 0).layers[layer]
    channels = recorded.shape[1]
    result = conditional(lrp, x, 0, [{layer: c} for c in range(channels)], batch=5)
    torch.testing.assert_close(result.relevance.sum(0), plain.relevance, atol=1e-6, rtol=1e-4)
    # relevance let through per channel is the recorded layer relevance of that channel
    per_channel = recorded.movedim(1, -1).reshape(len(x), -1, channels).sum(1).T
    torch.testing.assert_close(result.explained, per_channel, atol=1e-6, rtol=1e-4)


def test_a_target_alone_and_a_whole_layer_give_the_plain_explanation():
    model = vgg()
    x = torch.randn(2, 3, 16, 16)
    lrp = relprop.LRP(model)
    result = conditional(lrp, x, None, [{"y": 2}, {"6": list(range(8)), "y": 2}, {"6": torch.ones(8)}])
    torch.testing.assert_close(result.relevance[0], lrp(x, 2).relevance, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(result.relevance[1], lrp(x, 2).relevance, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(result.relevance[2], lrp(x).relevance, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(result.explained[0], lrp(x, 2).explained)


def test_conditions_are_explained_from_one_forward_pass():
    model = vgg()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    conditional(relprop.LRP(model), torch.randn(1, 3, 16, 16), 0, [{"3": [c]} for c in range(8)], batch=3)
    assert len(calls) == 1


def test_the_model_is_left_unchanged_and_in_training_mode_buffers_are_restored():
    model = TinyResNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conditional(relprop.LRP(model), torch.randn(2, 3, 8, 8), 0, [{"layer1": 1}])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize("conditions, message", [
    ({"features.6": [1]}, "no module named 'features.6'"),
    ({"6": [8]}, r"channels \[8\] out of range.*8 channels \(0..7\)"),
    ({"6": []}, "channel list is empty"),
    ({"6": torch.ones(3)}, "3 channel weights for a layer of 8 channels"),
    ([], "conditions is empty"),
    ({"y": 9}, "target .9. out of range"),
])
def test_bad_conditions_are_refused_with_the_fix(conditions, message):
    with pytest.raises(ValueError, match=message):
        conditional(relprop.LRP(vgg()), torch.randn(1, 3, 16, 16), 0, conditions)


def test_an_unknown_layer_suggests_the_closest_name():
    with pytest.raises(ValueError, match="did you mean '6'"):
        conditional(relprop.LRP(vgg()), torch.randn(1, 3, 16, 16), 0, {"6 ": 1})


class Branches(torch.nn.Module):
    """Two dense branches; forward uses the right one only when asked to."""

    def __init__(self, both: bool):
        super().__init__()
        self.left, self.right, self.both = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), both

    def forward(self, x):
        return self.left(x) + self.right(x) if self.both else self.left(x)


def test_a_layer_that_does_not_run_for_this_input_is_named():
    with pytest.raises(ValueError, match="layer 'right' did not run"):
        conditional(relprop.LRP(Branches(both=False)), torch.randn(2, 4), 0, {"right": 1})


def test_layers_on_separate_branches_cannot_share_a_condition():
    with pytest.raises(ValueError, match="separate branches"):
        conditional(relprop.LRP(Branches(both=True)), torch.randn(2, 4), 0, {"left": 1, "right": 1})


def test_target_tensors_shaped_like_the_output_are_kept_apart():
    model = vgg(classes=1200)  # reprs of tensors this large elide their middle
    x = torch.randn(1, 3, 16, 16)
    lrp = relprop.LRP(model)
    first, second = torch.zeros(1, 1200, dtype=torch.bool), torch.zeros(1, 1200, dtype=torch.bool)
    first[0, 600], second[0, 601] = True, True  # bool masks: the output's own values at those classes
    result = conditional(lrp, x, None, [{"y": first}, {"y": second}])
    torch.testing.assert_close(result.relevance[0], lrp(x, 600).relevance, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(result.relevance[1], lrp(x, 601).relevance, atol=1e-7, rtol=1e-5)
