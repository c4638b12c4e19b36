"""Element-wise ops and modules: relevance passes through, and a module keeps no more than a gradient would."""
import pytest
import torch
from torch import nn

import relprop
from relprop import rules
from relprop.composites import Composite
from relprop.ops import elementwise
from relprop.ops.kept import KeptOutput


class HandRMSNorm(nn.Module):
    """An RMSNorm as model files write it: pow, mean, rsqrt, computed in float32."""

    def __init__(self, size):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1.5, 2.0, size))

    def forward(self, x):
        work = x.float()
        scale = torch.rsqrt(work.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight.to(x.dtype) * (work * scale).to(x.dtype)


class TanhGELUActivation(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_norm_ratio_factors_into_row_scale_and_channel_weight(dtype):
    torch.manual_seed(0)
    x = (torch.randn(6, 10, 32) * 3).to(dtype)
    y = HandRMSNorm(32).to(dtype)(x).detach()
    rows, channels = elementwise._row_channel_factors(y, x)
    assert rows.shape == (6, 10, 1) and channels.shape == (32,) and rows.dtype == dtype
    ratio = y.double() / x.double()
    rounding = 8 * torch.finfo(dtype).eps * ratio.abs() + 1e-6
    assert ((rows.double() * channels.double() - ratio).abs() <= rounding).all()


def test_ratio_that_does_not_factor_is_refused():
    torch.manual_seed(0)
    x = torch.randn(6, 10, 32)
    assert elementwise._row_channel_factors(TanhGELUActivation()(x), x) is None
    x[2, 3, 4] = 0.0  # the ratio is 0 there by convention: no row scale times channel weight gives that
    assert elementwise._row_channel_factors(HandRMSNorm(32)(x).detach(), x) is None


def test_factored_norm_keeps_neither_its_input_nor_its_output():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 16, requires_grad=True)
    y = HandRMSNorm(16)(x).detach()
    out = elementwise.pass_module(x, y, KeptOutput(), norm=True)
    assert out.grad_fn.saved_tensors == () and out.grad_fn.factors is not None
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
    torch.testing.assert_close(g, y / x)


def test_rms_norm_module_passes_relevance_with_its_scale_held_constant():
    torch.manual_seed(0)
    first, last = nn.Linear(16, 16, bias=False), nn.Linear(16, 3, bias=False)
    model = nn.Sequential(first, HandRMSNorm(16), last)
    x = torch.randn(5, 16)
    expl = relprop.explain(model, x, target=1, composite=Composite(default=rules.Epsilon(1e-12)), strict=True,
                           elementwise=(HandRMSNorm,))
    # reference from the formula: gradient x input with 1/rms detached, which is LRP-0 through bias-free layers
    leaf = x.clone().requires_grad_(True)
    h = first(leaf)
    scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6).detach()
    out = last(model[1].weight * h * scale)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), leaf)
    torch.testing.assert_close(expl.relevance, (leaf * grad).detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=1e-4, atol=1e-6)


class InPlaceAfterActivation(nn.Module):
    def __init__(self, in_place):
        super().__init__()
        self.first, self.act, self.last = nn.Linear(8, 8), TanhGELUActivation(), nn.Linear(8, 2)
        self.in_place = in_place

    def forward(self, x):
        h = self.act(self.first(x))
        h = h.mul_(2.0).add_(0.5) if self.in_place else h * 2.0 + 0.5
        return self.last(h)


@pytest.mark.parametrize("create_graph", [False, True])
def test_activation_module_output_changed_in_place_explains_as_out_of_place(create_graph):
    torch.manual_seed(0)
    model = InPlaceAfterActivation(in_place=False)
    x = torch.randn(4, 8)
    expected = relprop.explain(model, x, target=0, composite="epsilon", strict=True).relevance
    model.in_place = True
    got = relprop.explain(model, x, target=0, composite="epsilon", strict=True, create_graph=create_graph)
    torch.testing.assert_close(got.relevance.detach(), expected, rtol=1e-5, atol=1e-7)
