"""Attention: decompositions equal the fused ops, and the softmax, product and CP-LRP rules match their formulas."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop.composites import AttnLRP, CPLRP
from relprop.ops import attention


def test_scaled_dot_product_decomposition_equals_the_fused_kernel():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    bool_mask = torch.rand(5, 6) > 0.3
    bool_mask[:, 0] = True
    float_mask = torch.randn(2, 1, 5, 6)
    for kwargs in ({}, {"attn_mask": bool_mask}, {"attn_mask": float_mask}, {"scale": 0.3}):
        torch.testing.assert_close(attention.scaled_dot_product(q, k, v, **kwargs),
                                   nn.functional.scaled_dot_product_attention(q, k, v, **kwargs))
    q6 = torch.randn(2, 3, 6, 4)
    torch.testing.assert_close(attention.scaled_dot_product(q6, k, v, is_causal=True),
                               nn.functional.scaled_dot_product_attention(q6, k, v, is_causal=True))
    k_few, v_few = k[:, :1], v[:, :1]
    torch.testing.assert_close(attention.scaled_dot_product(q, k_few, v_few, enable_gqa=True),
                               nn.functional.scaled_dot_product_attention(q, k_few, v_few, enable_gqa=True))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multi_head_decomposition_equals_torch(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    x = torch.randn(5, 5, 8)  # (N, L, E) or (L, N, E): five of each
    padding = torch.zeros(5, 5, dtype=torch.bool)
    padding[0, -1] = True
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False, attn_mask=causal)[0].sum(1)

    expl = relprop.explain(Wrapped(), x, target=0, composite="attnlrp", strict=True)
    torch.testing.assert_close(expl.output, Wrapped()(x).detach())
    if batch_first:
        out, weights = mha(x, x, x, key_padding_mask=padding)
        bound = dict(zip(attention.MHA_ARGS, (
            x.transpose(0, 1),) * 3 + (8, 2, mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0,
                                        mha.out_proj.weight, mha.out_proj.bias)))
        mine, my_weights = attention.multi_head(**bound, training=False, key_padding_mask=padding)
        torch.testing.assert_close(mine.transpose(0, 1), out)
        torch.testing.assert_close(my_weights, weights)


def test_attnlrp_softmax_rule_matches_its_formula():
    # AttnLRP: R_i = x_i (R_out_i - s_i sum_j R_out_j), with R_out the relevance of the softmax output.
    torch.manual_seed(0)
    x = torch.randn(1, 5)
    weights = torch.randn(5)

    class Softmaxed(nn.Module):
        def forward(self, x):
            return (torch.softmax(x, dim=-1) * weights).sum(-1, keepdim=True)

    expl = relprop.explain(Softmaxed(), x, target=0, composite="attnlrp")
    s = torch.softmax(x, -1)
    relevance_out = s * weights  # the weighted sum hands each term its share
    expected = x * (relevance_out - s * relevance_out.sum())
    torch.testing.assert_close(expl.relevance, expected)


def test_matmul_of_two_activations_splits_uniformly():
    a = torch.tensor([[[1.0, 2.0]]])
    b = torch.tensor([[[3.0], [4.0]]])

    class Product(nn.Module):
        def forward(self, x):
            return torch.matmul(x[:, :, :2], x[:, :, 2:].transpose(1, 2)).flatten(1)

    x = torch.cat([a, b.transpose(1, 2)], dim=2)  # (1, 1, 4): [1, 2, 3, 4]
    expl = relprop.explain(Product(), x, target=0, composite="attnlrp")
    # out = 1*3 + 2*4 = 11, split half to each factor, each half in proportion to the terms: 3/11 and 8/11
    torch.testing.assert_close(expl.relevance, torch.tensor([[[1.5, 4.0, 1.5, 4.0]]]))


def test_einsum_attention_splits_among_its_factors():
    x = torch.tensor([[1.0, 2.0, 3.0]])

    class Triple(nn.Module):
        def forward(self, x):
            return torch.einsum("bi,bj,bk->b", x[:, :1], x[:, 1:2], x[:, 2:]).unsqueeze(1)

    expl = relprop.explain(Triple(), x, target=0, composite="attnlrp")
    torch.testing.assert_close(expl.relevance, torch.full((1, 3), 2.0))  # 6 split in three


def test_cp_lrp_gives_attention_weights_no_relevance():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3)

    class Attend(nn.Module):
        def forward(self, x):
            weights = torch.softmax(x @ x.transpose(1, 2) / math.sqrt(3), dim=-1)
            return (weights @ x).sum((1, 2)).unsqueeze(1)

    expl = relprop.explain(Attend(), x, target=0, composite="cp_lrp")
    # with the weights constant the output is linear in x through the values: gradient x input of that map
    weights = torch.softmax(x @ x.transpose(1, 2) / math.sqrt(3), dim=-1)
    expected = x * weights.sum(1, keepdim=True).transpose(1, 2)
    torch.testing.assert_close(expl.relevance, expected)
    torch.testing.assert_close(expl.relevance_sum, expl.explained)


class LinearAttention(nn.Module):
    """The linear attention of zennit's issue tracker (diffusion U-Nets), with reshapes instead of einops."""

    def __init__(self, dim=8, heads=2, dim_head=4):
        super().__init__()
        self.scale, self.heads = dim_head ** -0.5, heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.GroupNorm(1, dim))

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
def test_linear_attention_from_zennit_issue_runs_strict(composite):
    torch.manual_seed(0)
    model = nn.Sequential(LinearAttention(), nn.Flatten(), nn.Linear(8 * 16, 3))
    x = torch.randn(2, 8, 4, 4)
    expl = relprop.explain(model, x, composite=composite, strict=True)
    assert torch.isfinite(expl.relevance).all() and expl.relevance.abs().sum() > 0
    report = relprop.LRP(model, composite).report(x)
    einsum_rules = {row.rule for row in report if row.op.endswith("einsum")}
    softmax_rules = {row.rule for row in report if row.op.endswith("softmax")}
    if composite == "attnlrp":
        assert einsum_rules == {"Uniform split over 2 factors"} and softmax_rules == {"Gradient (AttnLRP softmax)"}
    else:  # constant attention: each product has one factor left that carries relevance
        assert einsum_rules == {"Gradient"} and softmax_rules == {"Constant (CP-LRP)"}


class GatedMLP(nn.Module):
    """LLaMA's MLP: down(silu(gate(x)) * up(x)), here with the projections left out."""

    def __init__(self, module_activation):
        super().__init__()
        self.act = nn.SiLU() if not module_activation else type("SiLUActivation", (nn.Module,), {
            "forward": lambda self, x: x * torch.sigmoid(x)})()

    def forward(self, x):
        gate, up = x.chunk(2, dim=-1)
        return (self.act(gate) * up).sum(-1, keepdim=True)


@pytest.mark.parametrize("module_activation", [False, True])
def test_gated_mlp_splits_uniformly_under_attnlrp_and_gates_as_constant_under_cp_lrp(module_activation):
    x = torch.tensor([[1.5, -0.5, 2.0, 3.0]])
    product = F.silu(x[:, :2]) * x[:, 2:]  # relevance of each product, to share between gate and up
    attn = relprop.explain(GatedMLP(module_activation), x, target=0, composite="attnlrp", strict=True)
    torch.testing.assert_close(attn.relevance, torch.cat([product / 2, product / 2], 1))
    cp = relprop.explain(GatedMLP(module_activation), x, target=0, composite="cp_lrp", strict=True)
    torch.testing.assert_close(cp.relevance, torch.cat([torch.zeros_like(product), product], 1))


def test_composite_parameters():
    assert AttnLRP().softmax == "gradient" and CPLRP().softmax == "constant"
    assert AttnLRP().gates == "sigmoid" and CPLRP().gates == "activation"
    # linear layers: LRP-0 (their gradient, as LXT computes it) unless epsilon or gamma is given
    assert AttnLRP().layer_map["linear"] == relprop.rules.Zero()
    assert AttnLRP(epsilon=0.01).layer_map["linear"] == relprop.rules.Epsilon(0.01)
    assert relprop.composites.get("attnlrp", gamma=0.25).layer_map["linear"] == relprop.rules.Gamma(0.25, 1e-6)


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_gives_the_decomposition_relevance(composite, causal):
    # Explaining keeps the fused kernel and rescales its gradient; the report runs the decomposition op by op.
    torch.manual_seed(0)
    project = nn.Linear(6, 18)

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.project = project

        def forward(self, x):
            q, k, v = self.project(x).reshape(x.shape[0], x.shape[1], 3, 2, 3).permute(2, 0, 3, 1, 4)
            return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).sum((1, 2))

    x = torch.randn(2, 5, 6)
    lrp = relprop.LRP(Fused(), composite)
    fused = lrp(x, target=1)
    decomposed = lrp.report(x, target=1).explanation
    torch.testing.assert_close(fused.relevance, decomposed.relevance, rtol=1e-4, atol=1e-6)
