"""Run in the LXT environment (scripts/lxt_venv.sh): explain tiny random LLaMA, GPT-2 and BERT with relprop and with
LXT, the AttnLRP authors' efficient implementation, and print how far apart the input relevances are (JSON).

    .venv-lxt/bin/python -m tests.lxt_oracle attnlrp|cp_lrp     # from the repository root

Everything runs in float64, so that what remains is the rules, not rounding. relprop runs first, on unpatched
models; LXT's patches are global, so its models are built afterwards, from the same seeds.
"""
import json
import sys
import warnings

import torch
import transformers

import relprop
from relprop.language import explain_tokens
from tests.language_models import language_model

MODELS = [("llama", "eager"), ("llama", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa"), ("bert", "eager")]


def build(family, implementation):
    model = language_model(family, implementation)
    with torch.no_grad():  # non-zero biases and norm parameters, or the rules could not be told apart
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.double().eval()


def lxt_relevance(model, ids, target_column):
    """LXT's recipe: gradient x input on the input embeddings of the patched model."""
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings).logits
    chosen = logits[:, -1] if logits.dim() == 3 else logits
    chosen.gather(1, target_column[:, None]).sum().backward()
    return (embeddings * embeddings.grad).detach()


def main(composite):
    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    ours, targets = {}, {}
    for family, implementation in MODELS:
        result = explain_tokens(build(family, implementation), ids, composite=composite, strict=True)
        ours[family, implementation] = result.explanation.relevance
        targets[family, implementation] = result.target
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import bert, gpt2, llama

    for module in (llama, gpt2, bert):
        patch_map = module.attnLRP if composite == "attnlrp" or not hasattr(module, "cp_LRP") else module.cp_LRP
        source = {llama: "modeling_llama", gpt2: "modeling_gpt2", bert: "modeling_bert"}[module]
        if composite == "cp_lrp" and module is bert:
            continue  # LXT has no CP-LRP map for BERT
        monkey_patch(getattr(module, source), patch_map)
    report = {}
    for key, relevance in ours.items():
        if composite == "cp_lrp" and key[0] == "bert":
            continue
        theirs = lxt_relevance(build(*key), ids, targets[key])
        report["/".join(key)] = float((relevance - theirs).norm() / theirs.norm())
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
