"""The public API: targets of every kind, and bad input that is refused with a message naming the fix."""
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
