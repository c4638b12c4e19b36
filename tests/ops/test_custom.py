"""Custom torch.autograd.Functions on the data flow: reported as unsupported unless a rule is registered for them."""
import warnings

import pytest
import torch
from torch import nn

import relprop


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class Net(nn.Module):
    """fc1 -> custom Function -> fc2, no biases: a conservative rule hands the whole logit to the input."""

    def __init__(self, function, last=False):
        super().__init__()
        self.function, self.last = function, last
        self.fc1 = nn.Linear(4, 6, bias=False)
        self.fc2 = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = self.function.apply(self.fc1(x))
        return h.sum(1, keepdim=True) if self.last else self.fc2(h)


@pytest.fixture
def registry():
    yield relprop.register_function
    relprop.register_function(Square, None)
    relprop.register_function(Double, None)


def epsilon_by_hand(x, weight, relevance_out, epsilon):
    """R_in = x * W^T (R_out / (z + eps sign z)), written out from the formula."""
    z = x @ weight.T
    return x * ((relevance_out / (z + epsilon * torch.where(z >= 0, 1.0, -1.0))) @ weight)


def unsupported(caught):
    return [str(w.message) for w in caught if issubclass(w.category, relprop.UnsupportedOpWarning)]


def test_custom_function_without_rule_warns_naming_class_and_module():
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relprop.explain(Net(Square), torch.randn(2, 4), target=0, composite="epsilon")
    messages = unsupported(caught)
    assert len(messages) == 1
    assert "Square (custom autograd Function)" in messages[0] and "register_function" in messages[0]
    assert caught[0].filename == __file__  # the warning points at the caller, not at relprop's code


def test_custom_function_without_rule_raises_in_strict_mode():
    torch.manual_seed(0)
    with pytest.raises(relprop.UnsupportedOperation, match="Square \\(custom autograd Function\\)"):
        relprop.explain(Net(Square), torch.randn(2, 4), target=0, composite="epsilon", strict=True)


def test_custom_function_at_the_model_output_is_found():
    torch.manual_seed(0)
    with pytest.raises(relprop.UnsupportedOperation, match="Double"):
        relprop.explain(Net(Double, last=True), torch.randn(2, 4), strict=True)


def test_layers_after_a_custom_function_are_ruled_and_reported(registry):
    torch.manual_seed(0)
    registry(Double, "gradient")
    model, x = Net(Double), torch.randn(2, 4)
    report = relprop.LRP(model, "epsilon", strict=True).report(x, target=0)
    ops = [(row.op, row.module, row.rule) for row in report]
    assert ("Double (custom autograd Function)", "", "Gradient (registered)") in ops
    assert ("torch.nn.functional.linear", "fc2", "Epsilon") in ops
    assert not report.leaks(tolerance=1e-5)
    torch.testing.assert_close(report.explanation.relevance_sum, report.explanation.explained, rtol=1e-4, atol=1e-6)


def test_registered_pass_rule_hands_relevance_through_unchanged(registry):
    torch.manual_seed(0)
    registry(Square, "pass")
    model, x, epsilon = Net(Square), torch.randn(2, 4), 0.01
    expl = relprop.explain(model, x, target=0, composite="epsilon", epsilon=epsilon, strict=True)
    h = model.fc1(x).detach()
    y = h * h
    relevance_y = epsilon_by_hand(y, model.fc2.weight.detach(), model.fc2(y).detach() * torch.eye(3)[0], epsilon)
    expected = epsilon_by_hand(x, model.fc1.weight.detach(), relevance_y, epsilon)
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-4, atol=1e-6)


def test_registered_surrogate_gives_its_gradient_and_keeps_the_functions_value(registry):
    torch.manual_seed(0)
    model, x = Net(Square), torch.randn(2, 4)
    registry(Square, "pass")
    passed = relprop.explain(model, x, target=0, composite="epsilon", strict=True)
    registry(Square, lambda t: t * t.detach())  # gradient x input of this is t * t: relevance passes through
    surrogate = relprop.explain(model, x, target=0, composite="epsilon", strict=True)
    torch.testing.assert_close(surrogate.relevance, passed.relevance)
    torch.testing.assert_close(surrogate.output, model(x).detach())


def test_register_function_refuses_what_is_not_a_function_or_rule():
    with pytest.raises(TypeError, match="torch.autograd.Function subclass"):
        relprop.register_function(nn.ReLU, "pass")
    with pytest.raises(ValueError, match="'pass', 'gradient'"):
        relprop.register_function(Square, "linear-ish")
