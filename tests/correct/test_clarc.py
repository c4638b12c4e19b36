import copy

import pytest
import torch

from relprop import correct
from relprop.correct import clarc

from . import planted


def _cav(pooling="none", shape=(3, 4, 4), seed=0):
    generator = torch.Generator().manual_seed(seed)
    artifact = torch.randn(12, *shape, generator=generator) + 2.0 * (torch.arange(torch.Size(shape).numel())
                                                                     .reshape(shape) % 5 == 0)
    clean = torch.randn(15, *shape, generator=generator)
    return correct.from_activations(artifact, clean, "layer", pooling=pooling), artifact, clean


def test_projection_equals_the_hand_written_formula_on_flattened_activations():
    cav, artifact, _ = _cav()
    flat = artifact.flatten(1).double()
    v = (artifact.flatten(1).mean(0) - cav.clean_mean).double()
    v = v / v.norm()
    c = v @ cav.clean_mean.double()
    expected = flat - ((flat @ v - c)[:, None]) * v[None]
    torch.testing.assert_close(clarc.project(artifact, cav).flatten(1).double(), expected, rtol=1e-5, atol=1e-5)


def test_projection_with_mean_pooling_shifts_every_position_by_the_same_channel_vector():
    cav, artifact, _ = _cav("mean")
    means = artifact.mean((2, 3)).double()
    v = cav.direction.double()
    shift = means @ v - v @ cav.clean_mean.double()
    expected = artifact.double() - shift[:, None, None, None] * v[None, :, None, None]
    torch.testing.assert_close(clarc.project(artifact, cav).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["none", "mean"])
def test_projection_is_idempotent_and_keeps_the_clean_mean(pooling):
    cav, artifact, clean = _cav(pooling)
    once = clarc.project(artifact, cav)
    torch.testing.assert_close(clarc.project(once, cav), once, rtol=1e-5, atol=1e-5)
    # every projected sample lies on the clean hyperplane ...
    torch.testing.assert_close(cav.coordinate(once), cav.clean_level.expand(len(once)), rtol=1e-5, atol=1e-5)
    # ... and the clean samples' mean activation does not move
    torch.testing.assert_close(clarc.project(clean, cav).mean(0), clean.mean(0), rtol=1e-5, atol=1e-5)


def test_p_clarc_returns_a_corrected_copy_and_leaves_the_model_untouched():
    net = planted.trained()
    before = copy.deepcopy(net.state_dict())
    x, _ = planted.unmarked(20, 3)
    expected = net(x)
    images, labels, marked = planted.generate(200, 3)
    cav = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    fixed = correct.p_clarc(net, cav)
    assert not net.body[1]._forward_hooks
    torch.testing.assert_close(net(x), expected)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not torch.allclose(fixed(planted.add_artifact(x)), net(planted.add_artifact(x)))


def test_attach_corrects_in_place_until_its_handle_is_removed():
    net = planted.trained()
    images, labels, marked = planted.generate(200, 3)
    cav = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    x = planted.add_artifact(planted.unmarked(10, 4)[0])
    plain = net(x)
    handle = correct.attach(net, cav)
    torch.testing.assert_close(net(x), correct.p_clarc(planted.trained(), cav)(x))
    handle.remove()
    torch.testing.assert_close(net(x), plain)


def test_p_clarc_removes_a_planted_shortcut_and_keeps_clean_accuracy():
    net = planted.trained()
    images, labels, marked = planted.generate(300, 3)
    cav = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    fixed = correct.p_clarc(net, cav)
    x, y = planted.unmarked(400, 7)
    with_artifact = planted.add_artifact(x)
    before = correct.artifact_sensitivity(net, x, with_artifact, planted.ARTIFACT_CLASS).mean()
    after = correct.artifact_sensitivity(fixed, x, with_artifact, planted.ARTIFACT_CLASS).mean()
    assert before > 2.0  # the planted shortcut is there to remove
    assert after < 0.2 * before
    assert correct.accuracy(fixed, x, y) >= correct.accuracy(net, x, y) - 0.02
    assert correct.poisoned_accuracy(fixed, x, y, 2.0, planted.mask(), 1) > correct.poisoned_accuracy(
        net, x, y, 2.0, planted.mask(), 1) + 0.1


def test_a_layer_whose_output_changes_shape_is_refused_with_the_fix():
    cav, _, _ = _cav()
    with pytest.raises(ValueError, match="shape .*pooling='mean'"):
        clarc.project(torch.randn(2, 3, 5, 5), cav)
    cav_mean, _, _ = _cav("mean")
    assert clarc.project(torch.randn(2, 3, 5, 5), cav_mean).shape == (2, 3, 5, 5)  # any size with pooling "mean"
    with pytest.raises(ValueError, match="channels"):
        clarc.project(torch.randn(2, 4, 5, 5), cav_mean)


def test_lrp_explains_the_corrected_model_and_the_artifact_loses_its_relevance():
    from relprop import LRP

    net = planted.trained()
    images, labels, marked = planted.generate(300, 3)
    cav = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    x = planted.add_artifact(planted.unmarked(30, 8)[0])
    shares = [correct.artifact_relevance(LRP(model, "epsilon")(x, 1).relevance, planted.mask()).mean()
              for model in (net, correct.p_clarc(net, cav))]
    assert shares[1] < 0.5 * shares[0]
