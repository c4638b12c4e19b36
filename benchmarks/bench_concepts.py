"""Conditional heatmaps (CRP) of many channels for one image: relprop against zennit-crp, time and peak memory.

    .venv/bin/python benchmarks/bench_concepts.py              # vgg16, 64 channels of features.28, 224x224, CPU
    .venv/bin/python benchmarks/bench_concepts.py --size 112   # smaller input, for a loaded machine

VGG-16 is torchvision's, randomly initialised (non-zero biases), in eval mode; both libraries use epsilon_plus_flat
(zennit's EpsilonPlusFlat) and explain the predicted class through one channel of --layer per condition.
relprop: one forward pass, the conditions as batched backwards of --batch. zennit-crp: ``CondAttribution.generate``
(one forward of --batch copies of the image, a backward per batch) and ``CondAttribution.__call__`` (all
conditions in one batch). The floor: one forward of the plain model (a copy with out-of-place ReLUs), the gradient
of the target logit down to --layer, then the conditions' backward from the layer down as one batched plain gradient
(``torch.autograd.grad`` with ``is_grads_batched``, as relprop batches its conditions) with no LRP rule: what any
CRP must at least do. A second floor row takes the same plain gradients one condition at a time (PyTorch's batched
gradient has no batching rule for a convolution's backward, so it loops over the conditions inside and stacks the
results). --no-peer leaves zennit-crp out (its rows take minutes per round at 224x224). The time of a method is its
median over --rounds interleaved rounds (--clock cpu: the thread's CPU time, for a loaded machine); peak memory is
measured in a child process per method (--no-memory skips it), as in bench_lrp.py.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch
import torchvision

import bench_lrp
import relprop
from bench_lrp import measure
from relprop.concepts import conditional


def build_methods(size, count, layer, batch, peer=True):
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.uniform_(-0.05, 0.05)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        target = int(model(x).argmax(1))
    ours = [{"y": target, layer: [c]} for c in range(count)]
    lrp = relprop.LRP(model, "epsilon_plus_flat")
    methods = {f"relprop conditional (batch {batch})": lambda: conditional(lrp, x, None, ours, batch=batch).relevance,
               f"floor: plain batched gradient ({count})": plain_floor(model, x, target, layer, count),
               "floor: plain gradient per condition": plain_floor(model, x, target, layer, count, batched=False)}
    if not peer:
        return methods
    try:
        from crp.attribution import CondAttribution
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import VGGCanonizer
    except ImportError:
        return methods
    theirs = [{"y": [target], layer: [c]} for c in range(count)]
    attribution = CondAttribution(model)
    composite = EpsilonPlusFlat(canonizers=[VGGCanonizer()])

    def generate():
        return torch.cat([result.heatmap for result in attribution.generate(
            x.clone().requires_grad_(True), theirs, composite, batch_size=batch, verbose=False)])

    methods[f"zennit-crp generate (batch {batch})"] = generate
    methods["zennit-crp __call__ (one batch)"] = lambda: attribution(x.clone().requires_grad_(True), theirs,
                                                                     composite).heatmap
    return methods


def plain_floor(model, x, target, layer, count, batched=True):
    """One forward, the target's gradient down to ``layer``, then ``count`` channel conditions' gradients from the
    layer to the input as one batched backward (or one backward per condition): no LRP rule, nothing but the
    convolutions' own backward."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False  # keep the layer's output as it came out (relprop's rules read it unrectified)
    chosen = dict(plain.named_modules())[layer]

    def floor():
        held = {}
        handle = chosen.register_forward_hook(lambda module, args, output: held.setdefault("output", output))
        inputs = x.clone().requires_grad_(True)
        try:
            output = plain(inputs)
        finally:
            handle.remove()
        activation = held["output"]
        (above,) = torch.autograd.grad(output[0, target], activation, retain_graph=True)
        masks = torch.zeros((count, *activation.shape), dtype=activation.dtype)
        masks[torch.arange(count), :, torch.arange(count)] = 1  # condition c keeps channel c
        if not batched:
            return torch.stack([torch.autograd.grad(activation, inputs, grad_outputs=above * mask, retain_graph=True)[0]
                                for mask in masks])
        (heatmaps,) = torch.autograd.grad(activation, inputs, grad_outputs=above * masks, is_grads_batched=True)
        return heatmaps

    return floor


def check_agreement(methods):
    """The libraries' heatmaps (summed over colour channels) agree, so that the timing compares like with like."""
    results = [fn() for fn in methods.values()]
    ours = results[0].sum(2)[:, 0]
    for name, theirs in zip(list(methods)[1:], results[1:]):
        if name.startswith("floor"):
            continue  # a plain gradient, no heatmap to agree with
        scale = theirs.abs().max()
        print(f"  max |relprop - {name}| / max |{name}| = {float((ours - theirs).abs().max() / scale):.2e}")


def memory_in_child(args, method):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, __file__, "--memory-child", method, "--size", str(args.size), "--count",
               str(args.count), "--layer", args.layer, "--batch", str(args.batch)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--count", type=int, default=64, help="conditions: channels 0..count-1 of --layer")
    parser.add_argument("--layer", default="features.28")
    parser.add_argument("--batch", type=int, default=64, help="conditions per backward (both libraries)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared machine)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children (time only)")
    parser.add_argument("--no-peer", action="store_true", help="leave zennit-crp out (relprop and the floors only)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the thread's CPU time, which a loaded machine stretches less (1 thread)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        bench_lrp.CLOCK = time.thread_time
    methods = build_methods(args.size, args.count, args.layer, args.batch, peer=not args.no_peer)
    if args.memory_child:
        fn = methods[args.memory_child]
        fn()
        print(f"{measure(fn)[1]:.1f}")
        return
    print(f"vgg16, 1 image {args.size}x{args.size}, {args.count} conditions on {args.layer}, "
          f"{args.threads} threads, {args.clock} clock, torch {torch.__version__}")
    check_agreement(methods)
    times = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            times[name].append(measure(fn)[0])
    ours = statistics.median(next(iter(times.values())))
    floor = statistics.median(next(values for name, values in times.items() if name.startswith("floor")))
    print(f"{'method':40s} {'seconds':>8s} {'x relprop':>10s} {'x floor':>8s} {'peak MiB':>9s}")
    for name, values in times.items():
        seconds = statistics.median(values)
        memory = float("nan") if args.no_memory else memory_in_child(args, name)
        print(f"{name:40s} {seconds:8.2f} {seconds / ours:10.2f} {seconds / floor:8.2f} {memory:9.0f}")


if __name__ == "__main__":
    main()
