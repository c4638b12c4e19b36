"""AttnLRP and CP-LRP against plain gradient x input (and LXT, where it runs) on a tiny LLaMA and a ViT-Tiny.

    .venv/bin/python benchmarks/bench_transformers.py            # LLaMA hidden 256, 4 layers, 128 tokens; ViT-Tiny
    .venv/bin/python benchmarks/bench_transformers.py --quick    # smaller, for a smoke run

Batch 8, CPU, random init; interleaved rounds, medians; peak memory per method in a child process (see
bench_lrp.py).

LXT 2.1 needs transformers 4.x, so its rows come from a second environment, ``.venv-lxt`` (build it with
``scripts/lxt_venv.sh``), where the same LLaMA is explained by the gradient, by relprop and by LXT in one process:
the gradient and relprop in interleaved rounds, then LXT (its patches of transformers' classes are global, so it
runs last). The rows also say how closely LXT's relevance matches relprop's AttnLRP.
"""
from __future__ import annotations

import argparse
import json
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


def gradient_x_input(model, x, mask, forward):
    def run():
        leaf = x.detach().requires_grad_(True)
        out = forward(model, leaf)
        (grad,) = torch.autograd.grad(out[mask].sum(), leaf)
        return leaf * grad
    return run


def methods_for(name, quick):
    model, x, mask, forward = BUILDERS[name](quick)
    methods = {"gradient x input": gradient_x_input(model, x, mask, forward)}
    for composite in ("attnlrp", "cp_lrp"):
        lrp = relprop.LRP(model, composite, forward=forward)
        methods[f"relprop {composite}"] = (lambda lrp=lrp: lrp(x, target=mask).relevance)
    return methods


def patch_with_lxt():
    """LXT's efficient AttnLRP: its patches of the LLaMA classes (global: nothing unpatched runs after this)."""
    from lxt.efficient import monkey_patch
    from transformers.models.llama import modeling_llama

    monkey_patch(modeling_llama, verbose=False)


def child(name, quick, method):
    """Peak memory of one method, alone in this process."""
    if method == "LXT attnlrp":
        patch_with_lxt()
        fn = gradient_x_input(*llama(quick))
    else:
        fn = methods_for(name, quick)[method]
    fn()
    print(f"{measure(fn)[1]:.1f}")


def lxt_child(quick, rounds):
    """In the LXT environment: gradient and relprop interleaved, then LXT; medians and agreement as JSON."""
    import transformers

    methods = methods_for("llama", quick)
    times = {key: [] for key in methods}
    for round_index in range(rounds + 1):
        for key, fn in methods.items():
            seconds, _ = measure(fn)
            if round_index:
                times[key].append(seconds)
    ours = methods["relprop attnlrp"]().detach()
    patch_with_lxt()
    lxt = gradient_x_input(*llama(quick))
    lxt()
    times["LXT attnlrp"] = [measure(lxt)[0] for _ in range(rounds)]
    theirs = lxt().detach()
    per_token = ours.sum(-1), theirs.sum(-1)
    print(json.dumps({
        "transformers": transformers.__version__,
        "times": {key: statistics.median(values) for key, values in times.items()},
        "difference": float((ours - theirs).norm() / theirs.norm()),
        "token_difference": float((per_token[0] - per_token[1]).norm() / per_token[1].norm()),
    }))


def memory_in_child(name, quick, method, python=sys.executable):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    args = [python, __file__, "--child", name, method] + (["--quick"] if quick else [])
    return _last_line(subprocess.run(args, capture_output=True, text=True, env=env), float)


def _last_line(result, parse):
    try:
        return parse(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        lines = (result.stderr or "failed").strip().splitlines()
        raise RuntimeError(lines[-1][:160] if lines else "failed")


def lxt_rows(quick, rounds, python):
    """Rows measured in the LXT environment, ratios to the gradient there."""
    args = [python, __file__, "--lxt-child"] + (["--quick"] if quick else []) + ["--rounds", str(rounds)]
    found = _last_line(subprocess.run(args, capture_output=True, text=True), json.loads)
    label = f"llama (transformers {found['transformers']})"
    rows = {key: (seconds, memory_in_child("llama", quick, key, python)) for key, seconds in
            found["times"].items()}
    notes = {"LXT attnlrp": f"after the others (global patches); relevance differs from relprop attnlrp by "
                            f"{found['difference']:.1e} (per token {found['token_difference']:.1e}), relative L2"}
    return label, rows, notes


def print_rows(name, rows, notes):
    base_time, base_memory = rows["gradient x input"]
    for key, (seconds, mib) in rows.items():
        print(f"| {name} | {key} | {seconds:.3f} | {seconds / base_time:.2f}x | {mib:.0f} | "
              f"{mib / base_memory:.2f}x | {notes.get(key, '')} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lxt-python", default=os.path.join(os.path.dirname(__file__), "..", ".venv-lxt", "bin",
                                                              "python"),
                        help="interpreter of the environment with LXT (default .venv-lxt, from lxt_venv.sh)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--lxt-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.quick, args.child[1])
        return
    if args.lxt_child:
        lxt_child(args.quick, args.rounds)
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
        rows = {key: (statistics.median(values), memory_in_child(name, args.quick, key))
                for key, values in times.items()}
        print_rows(name, rows, {})
    if not os.path.exists(args.lxt_python):
        print(f"| llama | LXT attnlrp | | | | | not measured: no {args.lxt_python} (run scripts/lxt_venv.sh) |")
        return
    try:
        print_rows(*lxt_rows(args.quick, args.rounds, args.lxt_python))
    except RuntimeError as error:
        print(f"| llama | LXT attnlrp | | | | | fails: {error} |")


if __name__ == "__main__":
    main()
