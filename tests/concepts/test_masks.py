import pytest
import torch

import relprop
from relprop.concepts import masked
from tests.concepts.nets import vgg
from tests.models import TinyResNet, with_biases

pytestmark = pytest.mark.usefixtures("one_thread")


def zeroed_by_hand(lrp, module, x, target, weights):
    """Plain LRP with a gradient hook that multiplies g at module's output by weights over dim 1."""
    def forward_hook(_, args, output):
        shape = [1] * output.dim()
        shape[1] = -1
        output.register_hook(lambda g: g * weights.reshape(shape))

    handle = module.register_forward_hook(forward_hook)
    try:
        return lrp(x, target).relevance
    finally:
        handle.remove()


def test_masked_relevance_equals_lrp_with_the_masked_channels_zeroed_by_hand():
    model = vgg()
    x = torch.randn(2, 3, 16, 16)
    lrp = relprop.LRP(model)
    result = masked(lrp, x, 1, {"6": [0, 3, 5]})
    weights = torch.zeros(8)
    weights[[0, 3, 5]] = 1
    torch.testing.assert_close(result.relevance, zeroed_by_hand(lrp, model[6], x, 1, weights), atol=1e-7, rtol=1e-5)
    recorded = lrp(x, 1, record=["6"]).layers["6"]
    torch.testing.assert_close(result.remaining["6"], recorded[:, [0, 3, 5]].sum((1, 2, 3)))
    torch.testing.assert_close(result.explained, lrp(x, 1).explained)


def test_weights_re_weight_relevance_and_a_bypassed_layer_keeps_the_skip_path():
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).eval()
    x = torch.randn(2, 3, 8, 8)
    lrp = relprop.LRP(model)
    weights = torch.linspace(-1, 2, 8)
    result = masked(lrp, x, 2, {"layer1": weights})
    expected = zeroed_by_hand(lrp, model.layer1, x, 2, weights)
    torch.testing.assert_close(result.relevance, expected, atol=1e-7, rtol=1e-5)
    # a layer inside the block: the skip connection carries its relevance past the mask
    kept = masked(lrp, x, 2, {"layer1.bn1": [0]})
    plain = lrp(x, 2)
    assert not torch.allclose(kept.relevance, plain.relevance)
    torch.testing.assert_close(kept.relevance, zeroed_by_hand(lrp, model.layer1.bn1, x, 2, torch.eye(8)[0]),
                               atol=1e-7, rtol=1e-5)


def test_masks_must_name_layers_and_channels():
    lrp = relprop.LRP(vgg())
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="non-empty dict"):
        masked(lrp, x, 0, {})
    with pytest.raises(ValueError, match="did you mean '3'"):
        masked(lrp, x, 0, {"3.": [1]})
    with pytest.raises(ValueError, match=r"channels \[-9\] out of range"):
        masked(lrp, x, 0, {"3": [-9]})
