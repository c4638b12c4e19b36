"""1 against 2 torch threads for a plain forward pass and for incremental passes, interleaved in one process.

    PYTHONPATH=src python benchmarks/bench_threads.py                # VGG-16, 4 images at 224x224, 3 rounds

The incremental passes are region perturbation's chain (8 patches of 16x16 removed one by one) on a Runner built
outside the timer with incremental=True, so only the 8 incremental passes are timed. Printed: the median seconds
of each, and 2 threads / 1 thread (above 1: the second thread costs time, as on a machine whose cores are busy).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from relprop import evaluate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    x = torch.rand(args.count, 3, args.size, args.size)
    relevance = torch.randn_like(x)
    target = torch.zeros(args.count, dtype=torch.long)
    times = {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                start = time.perf_counter()
                model(x)
                times.setdefault(("plain forward", threads), []).append(time.perf_counter() - start)
            runner = evaluate.Runner(model, x, target, batch_size=args.count, softmax=True, chains=True,
                                     incremental=True)
            start = time.perf_counter()
            evaluate.region_perturbation(runner, x, relevance, target, patch_size=16, steps=8)
            times.setdefault(("8 incremental passes", threads), []).append(time.perf_counter() - start)
    for name in ("plain forward", "8 incremental passes"):
        one, two = statistics.median(times[name, 1]), statistics.median(times[name, 2])
        print(f"{name}: 1 thread {one:.3f} s, 2 threads {two:.3f} s, 2 threads / 1 thread {two / one:.2f}")


if __name__ == "__main__":
    main()
