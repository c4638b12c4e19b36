"""The engine: ops written in forward, modules used twice or with two inputs, default op rules, strict mode, records,
reports, differentiability, and leaving the model exactly as it was."""
import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import relprop
from relprop import rules
from relprop.composites import Composite
from tests.models import MLP, TinyResNet, calibrate, with_biases


def grad_x_input(model, x, target):
    """Plain gradient x input: what LRP-0 must equal on piecewise-linear nets."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[:, target].sum(), x)
    return (x * grad).detach()


def test_residual_written_as_x_plus_fx_does_not_double_relevance():
    # zennit without its canonizer: ResNet18's input relevance was 254x the logit.
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    model = calibrate(torchvision.models.resnet18(), x)
    expl = relprop.explain(model, x, composite="epsilon", canonizers=None)
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=1e-3, atol=1e-4)


def test_lrp0_equals_gradient_times_input_on_a_relu_resnet():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    model = with_biases(TinyResNet()).eval()
    expl = relprop.explain(model, x, target=2, composite=Composite(default=rules.Zero()), canonizers=None)
    torch.testing.assert_close(expl.relevance, grad_x_input(model, x, 2), rtol=1e-4, atol=1e-6)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Linear(3, 2)
        self.right = nn.Linear(2, 2)

    def forward(self, a, b):
        return self.left(a) * 2.0 + self.right(b)


class UsesTwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = TwoInputs()

    def forward(self, x):
        return self.mix(x[:, :3], x[:, 3:])


def test_module_with_two_inputs_gives_each_its_own_relevance():
    # zennit: the second input of a two-input module received the first one's relevance.
    torch.manual_seed(0)
    model = with_biases(UsesTwoInputs(), scale=0.0)
    x = torch.randn(4, 5)
    expl = relprop.explain(model, x, target=1, composite="epsilon")
    torch.testing.assert_close(expl.relevance, grad_x_input(model, x, 1), rtol=1e-4, atol=1e-6)


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 3)

    def forward(self, x):
        return self.shared(torch.relu(self.shared(x)))


def test_module_called_twice_gets_each_call_its_own_rule():
    torch.manual_seed(0)
    model = with_biases(CalledTwice(), scale=0.5)
    x = torch.randn(1, 3)
    eps = 0.1
    expl = relprop.explain(model, x, target=0, composite=Composite(layer_map={"linear": rules.Epsilon(eps)}))
    W, b = model.shared.weight.detach().double().numpy(), model.shared.bias.detach().double().numpy()
    a0 = x.double().numpy()[0]

    def epsilon_step(a, relevance_out):
        z = W @ a + b
        return (W * a[None, :] / (z + eps * np.where(z >= 0, 1, -1))[:, None] * relevance_out[:, None]).sum(0)

    a1 = np.maximum(W @ a0 + b, 0)
    out = W @ a1 + b
    relevance = epsilon_step(a0, epsilon_step(a1, np.array([out[0], 0, 0])))
    np.testing.assert_allclose(expl.relevance[0].numpy(), relevance, rtol=1e-5)


def test_product_of_two_activations_splits_relevance_uniformly():
    x = torch.tensor([[2.0, 3.0]])

    class Product(nn.Module):
        def forward(self, x):
            return (x[:, :1] * x[:, 1:]) * 1.0

    expl = relprop.explain(Product(), x, target=0)
    torch.testing.assert_close(expl.relevance, torch.tensor([[3.0, 3.0]]))  # 6 split in half


def test_sigmoid_gate_gets_no_relevance_and_the_signal_gets_all():
    class Gated(nn.Module):
        def forward(self, x):
            return x[:, :2] * torch.sigmoid(x[:, 2:])

    x = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    expl = relprop.explain(Gated(), x, target=torch.ones(1, 2, dtype=torch.bool))
    gated = (x[:, :2] * torch.sigmoid(x[:, 2:]))
    torch.testing.assert_close(expl.relevance[:, :2], gated)
    assert expl.relevance[:, 2:].abs().sum() == 0


def test_elementwise_activations_pass_relevance_through():
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    model = calibrate(MLP(), x)  # Linear, ReLU, Linear, GELU, Dropout, Linear with zero biases
    expl = relprop.explain(model, x, composite=Composite(default=rules.Epsilon(1e-9)), strict=True)
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=1e-4, atol=1e-6)


def test_layer_norm_treats_std_as_constant_and_conserves():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.LayerNorm(6, elementwise_affine=False), nn.Tanh(),
                          nn.Linear(6, 2, bias=False))
    x = torch.randn(4, 6)
    expl = relprop.explain(model, x, composite="epsilon", strict=True)
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=1e-4, atol=1e-6)
    # and the value is the library's own: output identical to a plain forward
    torch.testing.assert_close(expl.output, model(x).detach(), rtol=0, atol=0)


class ManualPow(nn.Module):
    def forward(self, x):
        return torch.erfinv(torch.tanh(x) * 0.5).sum(1, keepdim=True)


def test_unknown_op_warns_once_naming_op_and_module():
    model = nn.Sequential(nn.Linear(3, 3), ManualPow())
    x = torch.randn(2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lrp = relprop.LRP(model, "epsilon")
        lrp(x, target=0)
        lrp(x, target=0)
    found = [w for w in caught if issubclass(w.category, relprop.UnsupportedOpWarning)]
    assert len(found) == 1
    message = str(found[0].message)
    assert "torch.erfinv" in message and "'1' (ManualPow)" in message and "strict=True" in message
    assert found[0].filename == __file__  # the line of the model that ran the op, not relprop's code


def test_strict_mode_raises_and_leaves_no_hook_behind():
    model = nn.Sequential(nn.Linear(3, 3), ManualPow())
    with pytest.raises(relprop.UnsupportedOperation, match="torch.erfinv"):
        relprop.explain(model, torch.randn(2, 3), target=0, strict=True)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert not torch.overrides._get_current_function_mode_stack()
    # the model still works normally afterwards
    model(torch.randn(2, 3)).sum().backward()


def test_division_by_an_activation_is_reported():
    class Ratio(nn.Module):
        def forward(self, x):
            return x / (x.abs().sum(1, keepdim=True) + 1)

    with pytest.raises(relprop.UnsupportedOperation, match="div \\(by an activation\\)"):
        relprop.explain(Ratio(), torch.randn(2, 3), target=0, strict=True)
    # dividing by a constant is fine
    relprop.explain(nn.Sequential(nn.Linear(3, 3)), torch.randn(2, 3) / 2.0, target=0, strict=True)


def test_softmax_at_the_output_explains_the_logits():
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    net = calibrate(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), x)
    model = nn.Sequential(net, nn.Softmax(dim=1))
    expl = relprop.explain(model, x, target=1, composite="epsilon")
    assert expl.explained_logits
    logits = net(x).detach()
    torch.testing.assert_close(expl.explained, logits[:, 1])
    torch.testing.assert_close(expl.output, model(x).detach())
    torch.testing.assert_close(expl.relevance_sum, logits[:, 1], rtol=1e-4, atol=1e-6)


def test_record_keeps_relevance_at_named_modules():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    model = calibrate(TinyResNet(), x)
    expl = relprop.explain(model, x, composite="epsilon", record=["layer1", "layer2", "fc"])
    assert set(expl.layers) == {"layer1", "layer2", "fc"}
    assert expl.layers["layer1"].shape == (2, 8, 10, 10)
    for name in ("layer1", "layer2", "fc"):
        torch.testing.assert_close(expl.layers[name].flatten(1).sum(1), expl.explained, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="no module named 'layer3'; did you mean .*'layer1'"):
        relprop.explain(model, x, record=["layer3"])


def test_report_lists_every_op_with_module_rule_and_relevance():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    model = calibrate(TinyResNet(), x)
    report = relprop.LRP(model, "epsilon_gamma_box").report(x)
    ops = [(row.op, row.module, row.rule) for row in report]
    assert ("torch.nn.functional.conv2d + batch_norm (merged)", "stem.0 + stem.1", "ZBox") in ops
    assert ("torch.nn.functional.conv2d + batch_norm (merged)", "layer1.conv1 + layer1.bn1", "Gamma") in ops
    assert ("torch.nn.functional.linear", "fc", "Epsilon") in ops
    assert any(op in ("torch.Tensor.__iadd__", "torch.Tensor.add_") and module == "layer2" for op, module, _ in ops)
    top = [row for row in report if row.op == "torch.nn.functional.linear"][0]
    assert top.relevance_out == pytest.approx(report.explanation.explained.sum().item(), rel=1e-5)
    assert not report.leaks(tolerance=1e-3)
    text = str(report)
    assert "layer1.bn1" in text and "Gamma" in text and "residual" in text


def test_a_merged_layer_keeps_its_convolutions_place_in_the_report():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    model = calibrate(TinyResNet(), x)
    report = relprop.LRP(model, "epsilon_gamma_box").report(x)
    rows = list(report)
    assert [row.index for row in rows] == list(range(len(rows)))  # numbered in order, none taken out
    merged = [row for row in rows if row.op.endswith("(merged)")]
    assert merged[0] is rows[0]  # the stem's convolution ran first; its row became the merged layer's
    assert not any(row.op == "torch.nn.functional.conv2d" for row in rows)  # no half of a merge is left
    assert all(row.backward_seen and row.relevance_in != 0 for row in merged)


def test_relevance_is_differentiable_with_respect_to_parameters():
    torch.manual_seed(0)
    model = with_biases(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), scale=0.3).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    composite = Composite(layer_map={"linear": rules.Gamma(0.5)})

    def loss():
        return relprop.explain(model, x, target=0, composite=composite, create_graph=True).relevance.pow(2).sum()

    value = loss()
    assert value.requires_grad
    (grad,) = torch.autograd.grad(value, model[0].weight)
    # finite differences on one weight
    h = 1e-6
    with torch.no_grad():
        model[0].weight[1, 2] += h
    plus = loss().item()
    with torch.no_grad():
        model[0].weight[1, 2] -= 2 * h
    minus = loss().item()
    with torch.no_grad():
        model[0].weight[1, 2] += h
    assert grad[1, 2].item() == pytest.approx((plus - minus) / (2 * h), rel=1e-4, abs=1e-8)


def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def _assert_same_state(before, after):
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), key
    assert before[1:] == after[1:]


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_explaining_in_eval_mode_changes_nothing_in_the_model(composite):
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).eval()
    before = _state(model)
    relprop.explain(model, torch.randn(2, 3, 8, 8), composite=composite)
    _assert_same_state(before, _state(model))


def test_train_mode_moves_running_stats_exactly_like_one_plain_forward():
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).train()
    twin = with_biases(TinyResNet()).train()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 8, 8)
    expl = relprop.explain(model, x, composite="epsilon_gamma_box")
    with torch.no_grad():
        plain = twin(x)
    torch.testing.assert_close(expl.output, plain)
    for (key, value), (_, expected) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    assert all(m.training for m in model.modules())


def test_a_failing_call_in_train_mode_leaves_running_stats_as_they_were():
    model = with_biases(TinyResNet()).train()
    before = _state(model)
    with pytest.raises(ValueError, match="out of range"):
        relprop.explain(model, torch.randn(2, 3, 8, 8), target=7)
    _assert_same_state(before, _state(model))


def test_explaining_in_train_mode_conserves_with_batch_statistics():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    model = calibrate(TinyResNet(), x).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0  # keep the stats still; batch statistics are used either way
    expl = relprop.explain(model, x, composite="epsilon_gamma_box")
    # batch norm in train mode subtracts the batch mean: a bias, absorbed; so compare against LRP-0 on the same
    zero = relprop.explain(model, x, composite=Composite(default=rules.Epsilon(1e-9)))
    assert torch.isfinite(expl.relevance).all()
    torch.testing.assert_close(zero.relevance_sum + zero.delta, zero.explained)


def test_memory_stays_flat_over_100_calls():
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).eval()
    x = torch.randn(2, 3, 8, 8)
    lrp = relprop.LRP(model, "epsilon_gamma_box")

    def live_tensors():
        gc.collect()
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))

    lrp(x)
    baseline = live_tensors()
    for _ in range(100):
        lrp(x)
    assert live_tensors() <= baseline


def test_functional_model_with_batch_norm_is_merged_by_data_flow():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3)
    gamma, beta = torch.rand(4) + 0.5, torch.zeros(4)
    mean, var = torch.zeros(4), torch.rand(4) + 0.5
    head = torch.randn(2, 4)

    class Functional(nn.Module):
        def forward(self, x):
            z = F.conv2d(x, weight, padding=1)
            z = F.relu(F.batch_norm(z, mean, var, gamma, beta, False, 0.1, 1e-5))
            return F.adaptive_avg_pool2d(z, 1).flatten(1) @ head.T

    x = torch.randn(2, 3, 6, 6)
    merged_weight = weight * (gamma / torch.sqrt(var + 1e-5)).reshape(-1, 1, 1, 1)

    class Merged(nn.Module):
        def forward(self, x):
            z = F.relu(F.conv2d(x, merged_weight, padding=1))
            return F.adaptive_avg_pool2d(z, 1).flatten(1) @ head.T

    composite = Composite(layer_map={"conv": rules.Gamma(0.5)})
    got = relprop.explain(Functional(), x, target=0, composite=composite).relevance
    expected = relprop.explain(Merged(), x, target=0, composite=composite).relevance
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


# ---- the session itself (engine/session.py): sites, hooks, element-wise modules, a forward of the caller's --------
def test_linear_like_sites_are_numbered_in_the_order_they_run_with_pooling_at_minus_one_and_a_shared_layer_per_call():
    from relprop.engine.session import Session

    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.AvgPool1d(2), nn.Flatten(), shared, nn.ReLU(), shared)
    session = Session(model, Composite(layer_map={"linear": rules.Zero(), "conv": rules.Zero()}))
    session.run(torch.randn(2, 1, 10))
    assert [(site.kind, site.name, site.index) for site in session.sites] == [
        ("conv", "0", 0), ("avg_pool", "2", -1), ("linear", "4", 1), ("linear", "4", 2)]


class Odd(nn.Module):
    """An element-wise odd function built from an op without a rule: h + erfinv(tanh(h)) / 10."""

    def forward(self, h):
        return h + torch.erfinv(torch.tanh(h)) / 10


def test_a_forward_failing_inside_an_element_wise_module_leaves_no_hook_no_stack_and_no_suspended_module():
    from relprop.engine.session import Session

    class Failing(nn.Module):
        def forward(self, h):
            assert not torch.is_grad_enabled()  # an element-wise module runs without a graph of its inner ops
            raise ValueError("broken on purpose")

    model = nn.Sequential(nn.Linear(3, 3), Odd(), Failing())
    session = Session(model, Composite(layer_map={"linear": rules.Zero()}), elementwise=(Odd, Failing))
    with pytest.raises(ValueError, match="broken on purpose"):
        session.run(torch.randn(2, 3))
    assert not session.stack and session.suspended is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.is_grad_enabled()
    model[:2](torch.randn(2, 3)).sum().backward()  # the model works as before


def test_a_module_type_named_element_wise_passes_relevance_through_as_a_whole_even_in_strict_mode():
    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(4, 3), Odd(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].bias.uniform_(0.5, 1.0)
        model[2].bias.uniform_(0.5, 1.0)
    x = torch.randn(2, 4, dtype=torch.float64)
    composite = Composite(layer_map={"linear": rules.Zero()})
    with pytest.raises(relprop.UnsupportedOperation, match="torch.erfinv"):
        relprop.explain(model, x, target=1, composite=composite, strict=True)
    relevance = relprop.explain(model, x, target=1, composite=composite, strict=True, elementwise=(Odd,)).relevance
    W1, b1 = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    w = model[2].weight.detach().numpy()[1]
    for sample, row in enumerate(x.numpy()):
        h = W1 @ row + b1
        y = Odd()(torch.from_numpy(h)).numpy()
        # LRP-0 at the head gives y_j w_j; the module hands it to h_j unchanged; LRP-0 on the first layer x_i W_ji / h_j
        np.testing.assert_allclose(relevance[sample].numpy(), row * (W1.T @ (w * y / h)), rtol=1e-10, atol=1e-12)


def test_a_forward_of_the_callers_runs_the_model_instead_of_calling_it_on_x():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 2).double()

        def forward(self, inputs):
            return self.layer(inputs["pixels"])

    model = Keyed()
    x = torch.randn(2, 3, dtype=torch.float64)
    relevance = relprop.explain(model, x, target=0, composite=Composite(layer_map={"linear": rules.Zero()}),
                                forward=lambda m, t: m({"pixels": t})).relevance
    torch.testing.assert_close(relevance, x * model.layer.weight.detach()[0], rtol=1e-12, atol=1e-12)  # LRP-0: x_i w_i
