"""Pixel flipping's whole call with each way of running the model faster that keeps its numbers, on one thread.

    PYTHONPATH=src python benchmarks/bench_forward_techniques.py vgg16 --rounds 3      # or resnet50

Times ``evaluate.pixel_flipping`` (3 steps of 4 images at 224x224, given a relevance tensor, so 3 forward passes and
no clean pass) as a user calls it, the variants interleaved (their order reversed every other round), median of the
rounds: the model as given; the Runner's channels-last option (the input as channels-last copies); that and its wide
3x3 convolutions by Winograd's method (Runner(winograd=True), engine.winograd: the Runner's defaults); a channels-last
copy of the model made in the call; a copy with every batch norm that follows a convolution folded into it (eval
mode; models with batch norms only); a copy whose convolutions hold oneDNN-prepacked weights
(torch.utils.mkldnn.MkldnnConv2d, dense in and out). The copies are made inside the timed call, as a metric would
make them. Printed: seconds, speed-up against the model as given, and the largest relative difference of the
perturbed probabilities from it. Last, what scoring by the softmax over all classes costs per pass.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torchvision

import relprop
from relprop import evaluate


def folded(model):
    """A copy of model with each eval-mode BatchNorm2d that follows a Conv2d among its parent's children folded into
    that convolution (weight scaled per output channel, bias shifted) and replaced by an identity."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        children = list(parent.named_children())
        for (_, conv), (norm_name, norm) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                with torch.no_grad():
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                    conv.bias = torch.nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
                setattr(parent, norm_name, torch.nn.Identity())
    return model


def prepacked(model):
    """A copy of model whose Conv2d keep their weights in oneDNN's layout (converted once, not every pass)."""
    from torch.utils import mkldnn

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Conv2d):
                setattr(parent, name, mkldnn.MkldnnConv2d(child, torch.float))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="vgg16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # torch.utils.mkldnn's deprecation notes
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.05)
    x = torch.rand(4, 3, 224, 224)
    target = model(x).argmax(1)
    relevance = relprop.explain(model, x, target=target, composite="epsilon").relevance.detach()

    def call(make, channels_last=False, winograd=False):
        def whole():
            runner = evaluate.Runner(make(), x, target, batch_size=4, softmax=True, channels_last=channels_last,
                                     winograd=winograd)
            # a third of the 3 x 224 x 224 values per step, as bench_evaluate.py's pixel flipping
            return evaluate.pixel_flipping(runner, x, relevance, target, regions_per_step=224 * 224, steps=3,
                                           channel_dim=None).details["perturbed"]
        return whole

    variants = {
        "as given": call(lambda: model),
        "input channels-last (Runner(channels_last=True))": call(lambda: model, True),
        "input channels-last, wide 3x3 convolutions by Winograd's method (the Runner's defaults at 224 px)": call(
            lambda: model, True, True),
        "a channels-last copy of the model, made in the call": call(
            lambda: copy.deepcopy(model).to(memory_format=torch.channels_last), True),
        "oneDNN-prepacked convolutions, a copy made in the call": call(lambda: prepacked(model)),
    }
    if any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules()):
        variants["batch norms folded into a copy, made in the call"] = call(lambda: folded(model))
    times, values = {key: [] for key in variants}, {}
    for turn in range(args.rounds):
        for key, whole in (list(variants.items()) if turn % 2 == 0 else reversed(list(variants.items()))):
            start = time.perf_counter()
            values[key] = whole()
            times[key].append(time.perf_counter() - start)
    reference, base = values["as given"], statistics.median(times["as given"])
    for key in variants:
        seconds = statistics.median(times[key])
        gap = float(((values[key] - reference).abs() / reference.abs()).max())
        print(f"| {args.model} | {key} | {seconds:.3f} | {base / seconds:.2f}x | {gap:.1e} |")
    scores = torch.randn(4, 1000, dtype=torch.float64)
    start = time.perf_counter()
    for _ in range(1000):
        scores.softmax(1).gather(1, target.view(-1, 1))
    print(f"softmax over 1000 classes of 4 rows and the target's pick: {time.perf_counter() - start:.3f} ms per pass")


if __name__ == "__main__":
    main()
