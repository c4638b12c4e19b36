"""Concepts of transformers: MLP neurons and attention heads (the input of the output projection) as conditions."""
import pytest
import torch

import relprop
from relprop.concepts import conditional, heads, token_relevance
from tests.language_models import language_model

pytestmark = pytest.mark.usefixtures("one_thread")


def with_gradient_mask(lrp, module, x, target, mask):
    """Plain LRP with g at module's first input multiplied by mask (over the last dim), by a hand-made hook."""
    handle = module.register_forward_pre_hook(lambda _, args: args[0].register_hook(lambda g: g * mask) and None)
    try:
        return lrp(x, target).relevance
    finally:
        handle.remove()


def llama():
    model = language_model("llama", "eager").eval()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    embeddings = model.get_input_embeddings()(ids).detach()
    return model, embeddings, relprop.LRP(model, "attnlrp", forward=lambda m, e: m(inputs_embeds=e).logits[:, -1])


def vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2,
                                                              num_heads=4, num_classes=3).eval()
    return model, torch.randn(2, 3, 16, 16), relprop.LRP(model, "cp_lrp")


@pytest.mark.parametrize("make, attention, mlp", [
    (llama, "model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"),
    (vit, "blocks.0.attn.proj", "blocks.1.mlp.fc2"),
])
def test_a_head_or_a_neuron_carries_what_masking_it_by_hand_takes_away(make, attention, mlp):
    model, x, lrp = make()
    modules = dict(model.named_modules())
    plain = lrp(x, 2).relevance
    result = conditional(lrp, x, 2, [{f"{attention}:input": heads(h, 8)} for h in range(4)]
                         + [{f"{attention}:input": list(range(32))}, {f"{mlp}:input": [5, 9]}])
    for h in range(4):
        mask = torch.ones(32)
        mask[heads(h, 8)] = 0
        without = with_gradient_mask(lrp, modules[attention], x, 2, mask)
        torch.testing.assert_close(result.relevance[h], plain - without, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(result.relevance[:4].sum(0), result.relevance[4], atol=1e-7, rtol=1e-4)
    width = modules[mlp].in_features
    mask = torch.ones(width)
    mask[[5, 9]] = 0
    torch.testing.assert_close(result.relevance[5], plain - with_gradient_mask(lrp, modules[mlp], x, 2, mask),
                               atol=1e-7, rtol=1e-4)


def test_token_relevance_of_a_neuron_is_its_relevance_at_the_layer_per_position():
    model, x, lrp = llama()
    found = token_relevance(lrp, x, 7, "model.layers.1.mlp.up_proj", [3, 4])
    recorded = lrp(x, 7, record=["model.layers.1.mlp.up_proj"]).layers["model.layers.1.mlp.up_proj"]
    torch.testing.assert_close(found, recorded[..., [3, 4]].sum(-1))
    assert found.shape == (2, 6)


def test_head_channels_are_contiguous_blocks():
    assert heads(1, 4) == [4, 5, 6, 7] and heads([0, 2], 2) == [0, 1, 4, 5]
    with pytest.raises(ValueError, match="not .sample, token, feature."):
        token_relevance(relprop.LRP(torch.nn.Sequential(torch.nn.Linear(3, 2))), torch.randn(2, 3), 0, "0", [1])
