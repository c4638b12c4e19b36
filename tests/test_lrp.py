"""The public API: targets of every kind, and bad input that is refused with a message naming the fix."""
import warnings

import pytest
import torch
from torch import nn

import relprop
from tests.models import TinyResNet, calibrate, with_biases


@pytest.fixture
def model():
    torch.manual_seed(0)
    return with_biases(TinyResNet()).eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(3, 3, 8, 8)


def test_int_target_explains_that_logit_for_every_sample(model, x):
    expl = relprop.explain(model, x, target=2, composite="epsilon")
    torch.testing.assert_close(expl.explained, model(x)[:, 2].detach())
    assert expl.target.tolist() == [2, 2, 2]
    assert expl.relevance.shape == x.shape
    torch.testing.assert_close(expl.delta, expl.explained - expl.relevance.flatten(1).sum(1))


def test_one_target_per_sample(model, x):
    expl = relprop.explain(model, x, target=[0, 3, 4])
    out = model(x).detach()
    torch.testing.assert_close(expl.explained, out[[0, 1, 2], [0, 3, 4]])
    same = relprop.explain(model, x, target=torch.tensor([0, 3, 4]))
    torch.testing.assert_close(expl.relevance, same.relevance)


def test_none_explains_the_predicted_class(model, x):
    expl = relprop.explain(model, x, target=None)
    assert expl.target.tolist() == model(x).argmax(1).tolist()


def test_output_shaped_tensor_is_the_output_relevance(model, x):
    out = model(x).detach()
    relevance_out = torch.zeros_like(out)
    relevance_out[:, 1] = 1.5
    expl = relprop.explain(model, x, target=relevance_out, composite="epsilon")
    torch.testing.assert_close(expl.explained, torch.full((3,), 1.5))


def test_callable_target_builds_the_output_relevance(model, x):
    expl = relprop.explain(model, x, target=lambda out: out * (out > 0))
    out = model(x).detach()
    torch.testing.assert_close(expl.explained, (out * (out > 0)).sum(1))


def test_boolean_mask_selects_outputs(model, x):
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, [1, 2]] = True
    expl = relprop.explain(model, x, target=mask)
    torch.testing.assert_close(expl.explained, model(x)[:, 1:3].sum(1).detach())


def test_lrp_object_is_reusable_and_model_works_between_calls(model, x):
    lrp = relprop.LRP(model, "epsilon_plus_flat")
    first = lrp(x, target=1).relevance
    model(x).sum().backward()  # ordinary use in between
    torch.testing.assert_close(lrp(x, target=1).relevance, first)


@pytest.mark.parametrize("bad, error, message", [
    ([[1.0]], TypeError, "must be a torch.Tensor.*torch.as_tensor"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.long), TypeError, "dtype torch.int64.*x.float\\(\\)"),
    (torch.zeros(3, 8, 8), ValueError, "expect a batch of 4 dims.*x.unsqueeze\\(0\\)"),
    (torch.zeros(0, 3, 8, 8), ValueError, "empty batch"),
    (torch.tensor(1.0), ValueError, "scalar"),
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN or infinite.*nan_to_num"),
    (torch.zeros(1, 5, 8, 8), ValueError, "forward failed on an input of shape \\(1, 5, 8, 8\\)"),
])
def test_bad_input_is_refused_with_the_fix(model, bad, error, message):
    with pytest.raises(error, match=message):
        relprop.explain(model, bad)
    for module in model.modules():  # nothing left installed
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize("target, error, message", [
    (5, ValueError, "out of range: the output has 5 classes \\(0..4\\)"),
    (-1, ValueError, "out of range"),
    ([0, 1], ValueError, "2 class indices for a batch of 3"),
    (torch.zeros(3, 4), ValueError, "shaped like the output \\(3, 5\\)"),
    ("cat", TypeError, "target must be None .*a class int"),
    (True, TypeError, "not a bool"),
    (lambda out: out[:, 0], ValueError, "callable must return a tensor shaped like the output"),
])
def test_bad_target_is_refused(model, x, target, error, message):
    with pytest.raises(error, match=message):
        relprop.explain(model, x, target=target)


def test_model_returning_a_tuple_needs_an_output_selector(x):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = TinyResNet()

        def forward(self, x):
            out = self.body(x)
            return out, out.sum(1)

    model = TwoHeads().eval()
    with pytest.raises(TypeError, match="returned tuple, not a tensor; pass output="):
        relprop.explain(model, x)
    expl = relprop.explain(model, x, output=lambda out: out[0], target=1)
    assert expl.output.shape == (3, 5)


def test_unknown_names_are_refused_with_the_choices(model):
    with pytest.raises(ValueError, match="unknown composite 'epsilon_gama_box'; choose one of .*epsilon_gamma_box"):
        relprop.LRP(model, "epsilon_gama_box")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        relprop.LRP(lambda t: t)
    with pytest.raises(ValueError, match="unknown canonizer"):
        relprop.LRP(model, canonizers=["nope"])


def test_detached_model_output_is_reported(x):
    class Detached(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :4].detach()

    with pytest.raises(ValueError, match="does not depend on its input"):
        relprop.explain(Detached(), x)


def test_regression_output_without_classes_is_explained_whole():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    model = calibrate(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1), nn.Flatten(0)), x)
    expl = relprop.explain(model, x, composite="epsilon")
    torch.testing.assert_close(expl.explained, model(x).detach())
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=1e-4, atol=1e-6)


# ---- targets: numpy values, per-location outputs, messages that say what is needed ----------------------------------
def test_numpy_integer_targets_are_taken_as_ints(model, x):
    import numpy as np

    expected = relprop.explain(model, x, target=[0, 3, 4]).relevance
    for target in (np.array([0, 3, 4]), [np.int64(0), np.int32(3), np.int64(4)], np.array([0, 3, 4], np.uint8)):
        torch.testing.assert_close(relprop.explain(model, x, target=target).relevance, expected)
    one = relprop.explain(model, x, target=np.int64(2))
    assert one.target.tolist() == [2, 2, 2]
    with pytest.raises(TypeError, match="not a bool"):
        relprop.explain(model, x, target=np.bool_(True))


@pytest.fixture
def segmentation():
    from tests.models import UNet

    torch.manual_seed(0)
    return with_biases(UNet(classes=3)).eval()


def one_hot_mask(classes_per_location, classes):
    return nn.functional.one_hot(classes_per_location, classes).permute(0, 3, 1, 2).bool()


def test_no_target_on_a_segmentation_map_explains_the_predicted_class_at_each_location(segmentation):
    torch.manual_seed(2)
    images = torch.randn(2, 3, 8, 8)
    out = segmentation(images).detach()
    expl = relprop.explain(segmentation, images, composite="epsilon")
    assert torch.equal(expl.target, out.argmax(1))
    reference = relprop.explain(segmentation, images, target=one_hot_mask(out.argmax(1), 3), composite="epsilon")
    torch.testing.assert_close(expl.relevance, reference.relevance)
    torch.testing.assert_close(expl.explained, out.max(1).values.flatten(1).sum(1))
    assert expl[1].target.shape == (1, 8, 8)


def test_a_class_map_target_selects_one_class_per_location(segmentation):
    torch.manual_seed(2)
    images = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    expl = relprop.explain(segmentation, images, target=labels, composite="epsilon")
    reference = relprop.explain(segmentation, images, target=one_hot_mask(labels, 3), composite="epsilon")
    torch.testing.assert_close(expl.relevance, reference.relevance)
    one_class = relprop.explain(segmentation, images, target=1, composite="epsilon")
    assert one_class.target.tolist() == [1, 1]
    torch.testing.assert_close(one_class.explained, segmentation(images)[:, 1].detach().flatten(1).sum(1))


@pytest.mark.parametrize("target, message", [
    (torch.tensor([[1], [2], [0]]), r"shape \(3, 1\) \(a column: flatten it with target.flatten\(\)\)"),
    ([[1], [2], [0]], r"shape \(3, 1\) \(a column: flatten it with target.flatten\(\)\)"),
    ([[1], "a", 0], r"target must be None .*a class int, one class int per sample"),
    (torch.zeros(3, 5, 2), r"float target tensor must be shaped like the output \(3, 5\)"),
])
def test_target_messages_say_what_is_needed(model, x, target, message):
    with pytest.raises((ValueError, TypeError), match=message):
        relprop.explain(model, x, target=target)


def test_a_wrong_class_map_on_a_segmentation_map_lists_the_shapes_that_work(segmentation):
    with pytest.raises(ValueError, match=r"target has shape \(2, 4, 4\) for a batch of 2 \(output \(2, 3, 8, 8\)\).*"
                                         r"one per sample \(shape \(2,\)\), or a class map shaped \(2, 8, 8\)"):
        relprop.explain(segmentation, torch.randn(2, 3, 8, 8), target=torch.zeros(2, 4, 4, dtype=torch.long))


# ---- parameters --------------------------------------------------------------------------------------------------
def test_record_names_must_be_strings_and_an_index_is_pointed_to_its_name():
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"record takes qualified module names \(str.*got 2 \(int\); did you mean "
                                        r"'2'\?"):
        relprop.LRP(mlp, record=[2])
    with pytest.raises(TypeError, match="got None"):
        relprop.LRP(mlp, record=[None])


@pytest.mark.parametrize("strict", ["no", 0, None])
def test_strict_takes_only_booleans(model, strict):
    with pytest.raises(TypeError, match="strict must be True or False"):
        relprop.LRP(model, strict=strict)


def test_map_keys_that_match_no_layer_are_named_after_the_run(model, x):
    zplus, flat = relprop.rules.ZPlus(), relprop.rules.Flat()
    lrp = relprop.LRP(model, "epsilon", name_map={"layer1.conv9": zplus, "layer2.*": zplus},
                      index_map={40: flat, 0: flat})
    with pytest.warns(UserWarning) as caught:
        lrp(x, target=1)
    messages = [str(w.message) for w in caught]
    closest = "closest layers run: 'layer1.conv2', 'layer1.conv1'"
    assert any("name_map key 'layer1.conv9'" in m and closest in m for m in messages)
    assert any("index_map key 40 (the model ran 6 linear-like layers, 0..5)" in m for m in messages)
    assert not any("layer2.*" in m or "index_map key 0 " in m for m in messages)  # these matched
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per attributor
        lrp(x, target=1)


# ---- the composite used ------------------------------------------------------------------------------------------
def test_the_explanation_records_its_composite_with_parameters(model, x):
    expl = relprop.explain(model, x, composite="epsilon_gamma_box", low=-1.0, high=2.0)
    assert expl.composite == {"name": "epsilon_gamma_box", "parameters": {
        "low": -1.0, "high": 2.0, "epsilon": 1e-6, "gamma": 0.25, "stabilizer": 1e-6, "zero_bias": False}}
    assert expl[0].composite == expl.composite
    assert "composite='epsilon_gamma_box'" in repr(expl)
    own = relprop.explain(model, x, composite=relprop.composites.Epsilon(epsilon=0.1))
    assert own.composite == {"name": "epsilon", "parameters": {}}


def test_map_keys_given_to_the_default_composite_are_checked_too():
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.warns(UserWarning, match=r"name_map key 'fc9' matched no linear-like layer"):
        relprop.explain(mlp, torch.randn(2, 4), name_map={"fc9": relprop.rules.ZPlus()})



def test_a_container_name_in_name_map_is_pointed_to_its_glob(model, x):
    with pytest.warns(UserWarning, match=r"name_map key 'layer1' \(names match a layer's own module only; for the "
                                         r"layers inside 'layer1' use 'layer1.\*'\)"):
        relprop.explain(model, x, name_map={"layer1": relprop.rules.ZPlus()})


def test_a_composite_s_own_first_layer_rule_is_not_warned_about_on_a_model_without_linear_layers():
    class Product(nn.Module):
        def forward(self, x):
            return x[:, :2] * x[:, 2:]

    for composite in ("auto", "epsilon_plus_flat", "epsilon_gamma_box"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            relprop.explain(Product(), torch.randn(2, 4), composite=composite)
