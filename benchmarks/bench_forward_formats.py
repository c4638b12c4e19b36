"""What faster forward passes would give the pixel-wise metrics: stacked batches and channels-last, on one thread.

    PYTHONPATH=src python benchmarks/bench_forward_formats.py vgg16      # or resnet50

Times 16 images at 224x224 as 4 passes of 4 and as 1 pass of 16, each with the model as given (contiguous), with the
input alone in channels-last and with a channels-last copy of the model (best of 3, interleaved), and prints the
largest relative difference of the softmax probabilities from the plain pass (all classes, and the predicted one).
"""
from __future__ import annotations

import copy
import sys
import time

import torch
import torchvision


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "vgg16"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, 224, 224)
    x_last = x.contiguous(memory_format=torch.channels_last)
    variants = {
        "4 passes of 4": lambda: torch.cat([model(chunk) for chunk in x.split(4)]),
        "1 pass of 16": lambda: model(x),
        "4 passes of 4, input channels-last": lambda: torch.cat([model(chunk) for chunk in x_last.split(4)]),
        "4 passes of 4, model and input channels-last": lambda: torch.cat([last(chunk) for chunk in x_last.split(4)]),
        "1 pass of 16, model and input channels-last": lambda: last(x_last),
    }
    times, outputs = {key: [] for key in variants}, {}
    with torch.inference_mode():
        for _ in range(3):
            for key, call in variants.items():
                start = time.perf_counter()
                outputs[key] = call()
                times[key].append(time.perf_counter() - start)
    reference = outputs["4 passes of 4"].softmax(1)
    predicted = reference.argmax(1, keepdim=True)
    for key in variants:
        gap = (outputs[key].softmax(1) - reference).abs() / reference
        print(f"{name} | {key} | {min(times[key]):.3f} s | x{min(times['4 passes of 4']) / min(times[key]):.2f} | "
              f"largest relative difference {gap.max():.1e} (predicted class {gap.gather(1, predicted).max():.1e})")


if __name__ == "__main__":
    main()
