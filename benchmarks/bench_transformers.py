"""AttnLRP and CP-LRP against plain gradient x input (and LXT, where it runs) on a tiny LLaMA and a ViT-Tiny.

    .venv/bin/python benchmarks/bench_transformers.py            # LLaMA hidden 256, 4 layers, 128 tokens; ViT-Tiny
    .venv/bin/python benchmarks/bench_transformers.py --quick    # smaller, for a smoke run

Batch 8, CPU, random init; interleaved rounds, medians; peak memory per method in a child process (see
bench_lrp.py). LXT is optional (``pip install --no-deps lxt==2.1``): it patches transformers' classes globally,
so it runs last and in its own child process.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import warnings

import torch

import relprop
from bench_lrp import measure


def llama(quick):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hidden = 64 if quick else 256
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                      num_hidden_layers=2 if quick else 4, num_attention_heads=4,
                                      num_key_value_heads=4, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 1000, (8, 32 if quick else 128))
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(ids)
        logits = model(inputs_embeds=embeddings).logits
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[torch.arange(len(ids)), -1, logits[:, -1].argmax(-1)] = True
    return model, embeddings, mask, lambda m, e: m(inputs_embeds=e).logits


def vit(quick):
    import timm

    torch.manual_seed(0)
    size = 64 if quick else 224
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size).eval()
    x = torch.randn(8, 3, size, size)
    with torch.no_grad():
        logits = model(x)
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[torch.arange(len(x)), logits.argmax(-1)] = True
    return model, x, mask, lambda m, t: m(t)


BUILDERS = {"llama": llama, "vit_tiny": vit}


def methods_for(name, quick):
    model, x, mask, forward = BUILDERS[name](quick)

    def gradient():
        leaf = x.detach().requires_grad_(True)
        out = forward(model, leaf)
        (grad,) = torch.autograd.grad(out[mask].sum(), leaf)
        return leaf * grad

    methods = {"gradient x input": gradient}
    for composite in ("attnlrp", "cp_lrp"):
        lrp = relprop.LRP(model, composite, forward=forward)
        methods[f"relprop {composite}"] = (lambda lrp=lrp: lrp(x, target=mask).relevance)
    return methods


def lxt_method(name, quick):
    """LXT's efficient AttnLRP on the LLaMA: its patched model classes, gradient x input on the embeddings."""
    if name != "llama":
        raise RuntimeError("LXT is measured on the LLaMA only")
    from lxt.efficient import monkey_patch
    from transformers.models.llama import modeling_llama

    monkey_patch(modeling_llama, verbose=False)
    model, x, mask, forward = llama(quick)

    def run():
        leaf = x.detach().requires_grad_(True)
        out = forward(model, leaf)
        (grad,) = torch.autograd.grad(out[mask].sum(), leaf)
        return leaf * grad
    return run


def child(name, quick, method, what):
    fn = lxt_method(name, quick) if method == "LXT attnlrp" else methods_for(name, quick)[method]
    fn()
    if what == "memory":
        print(f"{measure(fn)[1]:.1f}")
    else:  # LXT's timing, in its own process because its patches are global
        print(statistics.median(measure(fn)[0] for _ in range(3)))


def run_child(name, quick, method, what):
    env = dict(os.environ)
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    args = [sys.executable, __file__, "--child", name, method, what] + (["--quick"] if quick else [])
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        lines = (result.stderr or "failed").strip().splitlines()
        raise RuntimeError(lines[-1][:100] if lines else "failed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.quick, args.child[1], args.child[2])
        return
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 8, CPU, median of {args.rounds} "
          "interleaved rounds\n")
    print("| model | method | time (s) | time / gradient | peak MiB | memory / gradient | note |")
    print("|---|---|---|---|---|---|---|")
    for name in BUILDERS:
        methods = methods_for(name, args.quick)
        times = {key: [] for key in methods}
        for round_index in range(args.rounds + 1):
            for key, fn in methods.items():
                seconds, _ = measure(fn)
                if round_index:
                    times[key].append(seconds)
        rows = {key: (statistics.median(values), run_child(name, args.quick, key, "memory"))
                for key, values in times.items()}
        notes = {}
        if name == "llama":
            try:
                rows["LXT attnlrp"] = (run_child(name, args.quick, "LXT attnlrp", "time"),
                                       run_child(name, args.quick, "LXT attnlrp", "memory"))
                notes["LXT attnlrp"] = "own process (global patches): compare with care"
            except RuntimeError as error:
                notes["LXT attnlrp"] = f"fails: {error}"
        base_time, base_memory = rows["gradient x input"]
        for key, (seconds, mib) in rows.items():
            print(f"| {name} | {key} | {seconds:.3f} | {seconds / base_time:.2f}x | {mib:.0f} | "
                  f"{mib / base_memory:.2f}x | {notes.get(key, '')} |", flush=True)
        for key, note in notes.items():
            if key not in rows:
                print(f"| {name} | {key} | | | | | {note} |")


if __name__ == "__main__":
    main()
