"""Batch-norm merging follows the data, never touches the model, and works in train mode."""
import pytest
import torch
from torch import nn

import relprop
from relprop import canonizers, rules
from relprop.composites import Composite
from tests.models import TinyResNet, with_biases

GAMMA = Composite(layer_map={"conv": rules.Gamma(0.5), "linear": rules.Epsilon(0.01)})


class OutOfOrder(nn.Module):
    """Registered as [bn_b, conv_a, bn_a, conv_b] but run conv_a -> bn_a -> conv_b -> bn_b."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.BatchNorm2d(4), nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                     nn.Conv2d(4, 4, 3, padding=1)])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        bn_b, conv_a, bn_a, conv_b = self.layers
        x = torch.relu(bn_a(conv_a(x)))
        x = torch.relu(bn_b(conv_b(x)))
        return self.head(x.mean((2, 3)))


def merged_by_hand(model: OutOfOrder) -> nn.Module:
    """The same function with each batch norm folded into the convolution before it, written out by hand."""
    bn_b, conv_a, bn_a, conv_b = model.layers

    def fold(conv, bn):
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        return fused

    class Folded(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = fold(conv_a, bn_a), fold(conv_b, bn_b), model.head

        def forward(self, x):
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))

    return Folded().eval()


def test_module_list_run_out_of_registration_order_is_merged_by_data_flow():
    # zennit: merging by registration order changed this kind of model's output by up to 4.1, silently.
    torch.manual_seed(0)
    model = with_biases(OutOfOrder(), scale=0.3).eval()
    x = torch.randn(2, 3, 6, 6)
    expl = relprop.explain(model, x, target=1, composite=GAMMA)
    reference = relprop.explain(merged_by_hand(model), x, target=1, composite=GAMMA)
    torch.testing.assert_close(expl.output, model(x).detach(), rtol=0, atol=0)
    torch.testing.assert_close(expl.relevance, reference.relevance, rtol=1e-4, atol=1e-6)


def test_merging_changes_the_result_of_non_gradient_rules():
    torch.manual_seed(0)
    model = with_biases(OutOfOrder(), scale=0.3).eval()
    x = torch.randn(2, 3, 6, 6)
    merged = relprop.explain(model, x, target=1, composite=GAMMA, canonizers="auto").relevance
    separate = relprop.explain(model, x, target=1, composite=GAMMA, canonizers=None).relevance
    assert (merged - separate).abs().max() > 1e-4


class Reused(nn.Module):
    """One conv + batch norm pair applied twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return torch.relu(self.bn(self.conv(x))).sum((2, 3))


def test_reused_modules_are_merged_on_each_call():
    torch.manual_seed(0)
    model = with_biases(Reused(), scale=0.3).eval()
    x = torch.randn(1, 3, 5, 5)
    scale = model.bn.weight / torch.sqrt(model.bn.running_var + model.bn.eps)
    fused = nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        fused.weight.copy_(model.conv.weight * scale[:, None, None, None])
        fused.bias.copy_((model.conv.bias - model.bn.running_mean) * scale + model.bn.bias)
    reference = nn.Sequential()
    reference.forward = lambda t: torch.relu(fused(torch.relu(fused(t)))).sum((2, 3))
    expl = relprop.explain(model, x, target=0, composite=GAMMA)
    expected = relprop.explain(reference, x, target=0, composite=GAMMA)
    torch.testing.assert_close(expl.relevance, expected.relevance, rtol=1e-4, atol=1e-6)


def test_state_dict_is_bit_identical_after_merging():
    # zennit: after merging, state_dict() held the merged weights.
    model = with_biases(TinyResNet()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    relprop.explain(model, torch.randn(1, 3, 8, 8), composite="epsilon_gamma_box")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_merging_works_in_train_mode():
    # zennit: merging raised in train() mode.
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).train()
    x = torch.randn(4, 3, 8, 8)
    expl = relprop.explain(model, x, composite="epsilon_gamma_box")
    assert torch.isfinite(expl.relevance).all() and expl.relevance.abs().sum() > 0


def test_canonizer_specs():
    assert [type(c) for c in canonizers.resolve("auto")] == [canonizers.MergeBatchNorm]
    assert canonizers.resolve(None) == ()
    assert [type(c) for c in canonizers.resolve([canonizers.MergeBatchNorm()])] == [canonizers.MergeBatchNorm]
    with pytest.raises(ValueError, match="unknown canonizer 'merge'"):
        canonizers.resolve(["merge"])


def test_recording_a_convolution_whose_batch_norm_was_merged_gives_the_merged_layers_relevance():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = with_biases(torchvision.models.resnet18(num_classes=5)).eval()
    x = torch.randn(1, 3, 32, 32)
    names = ["conv1", "bn1", "layer4.1.conv2", "layer4.1.bn2"]
    layers = relprop.explain(model, x, record=names).layers
    for conv, bn in (("conv1", "bn1"), ("layer4.1.conv2", "layer4.1.bn2")):
        assert layers[bn].abs().sum() > 0
        torch.testing.assert_close(layers[conv], layers[bn])  # one merged layer: its output relevance
    separate = relprop.explain(model, x, record=["conv1", "bn1"], canonizers=None).layers
    assert separate["conv1"].abs().sum() > 0
    assert not torch.equal(separate["conv1"], separate["bn1"])


def test_report_names_both_modules_of_a_merged_layer():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = with_biases(torchvision.models.resnet18(num_classes=5)).eval()
    rows = relprop.LRP(model).report(torch.randn(1, 3, 32, 32))
    merged = {row.module for row in rows if row.op.endswith("(merged)")}
    assert {"conv1 + bn1", "layer4.1.conv2 + layer4.1.bn2", "layer1.0.conv1 + layer1.0.bn1"} <= merged


def test_a_canonizer_takes_the_place_of_a_familys_handler():
    seen = []

    class Counted(canonizers.Canonizer):
        def handlers(self):
            def rectifier(ctx, func, name, args, kwargs):
                seen.append(name)
                return ctx.plain(func, name, args, kwargs, rule="Gradient (counted)")

            return {"rectifier": rectifier}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    report = relprop.LRP(model, "epsilon", canonizers=[Counted()]).report(torch.randn(2, 3))
    assert seen == ["torch.nn.functional.relu"]
    assert ("torch.nn.functional.relu", "1", "Gradient (counted)") in [(r.op, r.module, r.rule) for r in report]
