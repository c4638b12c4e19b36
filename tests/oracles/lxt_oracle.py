"""Run in the LXT environment (scripts/lxt_venv.sh): explain tiny random LLaMA, GPT-2, BERT and torchvision ViT with
relprop and with LXT, the AttnLRP authors' efficient implementation, and print how far apart the input relevances
are (JSON).

    .venv-lxt/bin/python -m tests.oracles.lxt_oracle attnlrp|cp_lrp     # from the repository root

Everything runs in float64, so that what remains is the rules, not rounding. relprop runs first, on unpatched
models; LXT's patches are global, so its models are built afterwards, from the same seeds. LXT has AttnLRP maps for
the language models and a CP-LRP map for all but BERT, plus one for torchvision's ViT.
"""
import json
import sys
import warnings

import torch
import torchvision
import transformers

import relprop
from relprop.language import explain_tokens
from tests.language_models import language_model

LANGUAGE = {"attnlrp": [("llama", "eager"), ("llama", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa"), ("bert", "eager")],
            "cp_lrp": [("llama", "eager"), ("llama", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa")]}


def with_offsets(model):
    """Non-zero biases and norm parameters, or the rules could not be told apart; float64."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or "ln_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
            if name == "heads.head.weight":  # torchvision starts its ViT head at zero
                parameter.normal_(0, 0.5)
    return model.double().eval()


def vision_transformer():
    torch.manual_seed(0)
    return with_offsets(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                             hidden_dim=16, mlp_dim=32, num_classes=5))


def gradient_x_input(model, x, forward, target):
    """LXT's recipe: gradient x input of the chosen logits, on the patched model."""
    x = x.detach().requires_grad_(True)
    forward(model, x).gather(1, target[:, None]).sum().backward()
    return (x * x.grad).detach()


def last_token(model, embeddings):
    logits = model(inputs_embeds=embeddings).logits
    return logits[:, -1] if logits.dim() == 3 else logits


def patch_with_lxt(composite):
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import bert, gpt2, llama, vit_torch

    targets = [(llama, llama.modeling_llama), (gpt2, gpt2.modeling_gpt2)]
    targets += [(bert, bert.modeling_bert)] if composite == "attnlrp" else [(vit_torch, vit_torch.vision_transformer)]
    for maps, module in targets:
        monkey_patch(module, maps.attnLRP if composite == "attnlrp" else maps.cp_LRP)


def main(composite):
    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    ours = {}
    for key in LANGUAGE[composite]:
        result = explain_tokens(with_offsets(language_model(*key)), ids, composite=composite, strict=True)
        ours["/".join(key)] = result.explanation.relevance, result.target
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    if composite == "cp_lrp":
        expl = relprop.explain(vision_transformer(), images, composite=composite, strict=True)
        ours["vit"] = expl.relevance, expl.target
    patch_with_lxt(composite)
    report = {}
    for key, (relevance, target) in ours.items():
        if key == "vit":
            theirs = gradient_x_input(vision_transformer(), images, lambda m, x: m(x), target)
        else:
            model = with_offsets(language_model(*key.split("/")))
            theirs = gradient_x_input(model, model.get_input_embeddings()(ids), last_token, target)
        report[key] = float((relevance - theirs).norm() / theirs.norm())
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
