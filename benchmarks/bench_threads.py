"""1 against 2 torch threads for a plain forward pass and for incremental passes, interleaved in one process.

    PYTHONPATH=src python benchmarks/bench_threads.py                # VGG-16, 4 images at 224x224, 3 rounds

The incremental passes are region perturbation's chain (8 patches of 16x16 removed one by one, the steps' stacked
tail run once) on a Runner with incremental=True whose clean pass is kept first, as a whole call keeps it; the
kept clean pass and the 8 steps (the runner's work on them included) are timed apart. Printed: the median wall and
CPU seconds of each, and 2 threads / 1 thread (above 1: the second thread costs time, as on a machine whose cores
are busy), and the largest relative difference between the two thread counts' curves.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from relprop import evaluate


def clock():
    return time.perf_counter(), time.process_time()


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
    times, curves = {}, {}

    def timed(name, threads, call):
        wall, cpu = clock()
        value = call()
        times.setdefault((name, threads), []).append((time.perf_counter() - wall, time.process_time() - cpu))
        return value

    for _ in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                timed("plain forward", threads, lambda: model(x))
            runner = evaluate.Runner(model, x, target, batch_size=args.count, softmax=True, chains=True,
                                     incremental=True)

            def kept():
                runner._set_output(runner.run(x, runner.incremental))  # the clean pass, kept as a chain keeps it
                runner._checkpoint(torch.arange(len(x)))

            with torch.inference_mode():
                timed("kept clean pass", threads, kept)
            result = timed("8 steps with their stacked tail", threads, lambda: evaluate.region_perturbation(
                runner, x, relevance, target, patch_size=16, steps=8))
            curves[threads] = result.curves["morf"]
    for name in ("plain forward", "kept clean pass", "8 steps with their stacked tail"):
        one, two = (statistics.median(wall for wall, _ in times[name, n]) for n in (1, 2))
        cpu_one, cpu_two = (statistics.median(cpu for _, cpu in times[name, n]) for n in (1, 2))
        print(f"{name}: 1 thread {one:.3f} s (CPU {cpu_one:.3f} s), 2 threads {two:.3f} s (CPU {cpu_two:.3f} s), "
              f"2 threads / 1 thread {two / one:.2f}")
    difference = ((curves[2] - curves[1]).abs() / curves[1].abs()).max()
    print(f"largest relative difference between the curves on 1 and 2 threads: {float(difference):.1e}")


if __name__ == "__main__":
    main()
