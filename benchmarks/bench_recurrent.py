"""Wall time of LRP (and DeepLift) on an LSTM classifier, as multiples of the plain gradient through the fused op.

    python benchmarks/bench_recurrent.py                 # batch 32, 100 steps, hidden 256, CPU
    python benchmarks/bench_recurrent.py --quick         # batch 8, 20 steps, hidden 64, for a smoke run
    python benchmarks/bench_recurrent.py --zero-bias     # also LRP with zero_bias=True (float64 steps)

The model is a one-layer LSTM (input 256) read at its last step by a linear layer, randomly initialised, in eval
mode. Each round times every method once, in the same order; a method's time is its median over the rounds.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import relprop
from relprop.attribution import DeepLift


class Classifier(nn.Module):
    def __init__(self, features, hidden, layers, bidirectional, classes=2):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def plain_gradient(model, x, target):
    leaf = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, target].sum(), leaf)
    return grad


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deeplift", action="store_true", help="time DeepLift too")
    parser.add_argument("--zero-bias", action="store_true", help="time LRP with zero_bias=True too")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.hidden, args.rounds = 8, 20, 64, 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Classifier(args.hidden, args.hidden, args.layers, args.bidirectional).eval()
    x = torch.randn(args.batch, args.steps, args.hidden)
    lrp = relprop.LRP(model, "epsilon", epsilon=1e-3)
    methods = {"gradient (fused op)": lambda: plain_gradient(model, x, 0), "LRP epsilon (Arras)": lambda: lrp(x, 0)}
    if args.zero_bias:
        zero_bias = relprop.LRP(model, "epsilon", epsilon=0.0, zero_bias=True)
        methods["LRP epsilon=0 zero_bias"] = lambda: zero_bias(x, 0)
    if args.deeplift:
        methods["DeepLift"] = lambda: DeepLift(model)(x, 0)
    times = {name: [] for name in methods}
    for name, call in methods.items():
        call()  # warm-up
    for _ in range(args.rounds):
        for name, call in methods.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["gradient (fused op)"])
    print(f"LSTM batch {args.batch}, {args.steps} steps, hidden {args.hidden}, {args.layers} layer(s)"
          f"{', bidirectional' if args.bidirectional else ''}, {args.threads} thread(s), median of {args.rounds}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:24s} {median * 1000:9.1f} ms   {median / base:5.2f}x")


if __name__ == "__main__":
    main()
