"""Wall time of relprop's attribution methods and captum's equivalents, as multiples of a plain gradient.

    python benchmarks/bench_attribution.py            # vgg16 and resnet50, batch 4, 224x224, CPU
    python benchmarks/bench_attribution.py --quick    # 64x64 inputs, for a smoke run

Models are torchvision's, randomly initialised, in eval mode. Each round times every method once, in the same
order; a method's time is its median over the rounds (--rounds). IG and occlusion get the same number of model
inputs per forward pass in both libraries (--batch-size), so the comparison is of the methods, not of batching
defaults.
A cell reads "failed" when the library raised (captum's DeepLift refuses ResNets, whose ReLU modules are reused).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision

from relprop.attribution import DeepLift, IntegratedGradients, Occlusion


def plain_gradient(model, x, target):
    leaf = x.detach().requires_grad_(True)
    output = model(leaf)
    (grad,) = torch.autograd.grad(output[:, target].sum(), leaf)
    return grad


def methods(model, x, target, steps, window, batch_size):
    """name -> (relprop call, captum call or None) for one model."""
    from captum.attr import DeepLift as CaptumDeepLift
    from captum.attr import IntegratedGradients as CaptumIntegratedGradients
    from captum.attr import Occlusion as CaptumOcclusion

    channels = x.shape[1]
    windows_per_pass = max(1, batch_size // len(x))
    return {
        "gradient": (lambda: plain_gradient(model, x, target), None),
        "DeepLift": (lambda: DeepLift(model)(x, target),
                     lambda: CaptumDeepLift(model).attribute(x, target=target)),
        f"IntegratedGradients ({steps} steps)": (
            lambda: IntegratedGradients(model, steps=steps, batch_size=batch_size)(x, target),
            lambda: CaptumIntegratedGradients(model).attribute(x, target=target, n_steps=steps,
                                                               internal_batch_size=batch_size)),
        f"Occlusion ({window}x{window}, stride {window})": (
            lambda: Occlusion(model, (window, window), stride=window, batch_size=batch_size)(x, target),
            lambda: CaptumOcclusion(model).attribute(x, (channels, window, window), strides=(channels, window, window),
                                                     target=target, perturbations_per_eval=windows_per_pass)),
    }


def timed(call):
    start = time.perf_counter()
    try:
        call()
    except Exception as error:  # captum refusing a model is a result, not a crash of the benchmark
        return error
    return time.perf_counter() - start


def measure(name, size, batch, rounds, steps, window, batch_size, only=None):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(batch, 3, size, size)
    target = 1
    table = methods(model, x, target, steps, window, batch_size)
    if only:  # the gradient is every ratio's reference, DeepLift the warm-up
        table = {key: calls for key, calls in table.items()
                 if key in ("gradient", "DeepLift") or any(key.startswith(prefix) for prefix in only)}
    times = {key: ([], []) for key in table}
    for method in ("gradient", "DeepLift"):  # warm up (allocator, lazy inits); the long methods need none
        for call in table[method]:
            if call is not None:
                timed(call)
    for round_number in range(rounds):
        for method, calls in table.items():
            for library, call in enumerate(calls):
                if call is not None:
                    times[method][library].append(timed(call))
        print(f"  {name}: round {round_number + 1}/{rounds} done", flush=True)
    return times


def cell(samples, reference):
    if not samples:
        return "-"
    errors = [s for s in samples if isinstance(s, Exception)]
    if errors:
        return f"failed ({type(errors[0]).__name__})"
    return f"{statistics.median(samples) / reference:.2f}x"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x64 inputs")
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=None, help="input height and width (default 224, quick 64)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per method (default 3)")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="model inputs per pass for IG and occlusion")
    parser.add_argument("--only", nargs="+", default=None, metavar="METHOD",
                        help="time only the methods whose names start with these (and the gradient), e.g. Occlusion")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's; 1 gives steadier ratios on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (64 if args.quick else 224)
    rounds = args.rounds or 3
    window = size // 4
    warnings.simplefilter("ignore")  # captum's notes about hooks and gradients on every call
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {size}x{size}, "
          f"median of {rounds} rounds", flush=True)
    results = {name: measure(name, size, args.batch, rounds, args.steps, window, args.batch_size, args.only)
               for name in args.models.split(",")}
    names = list(results)
    print()
    print("| method | " + " | ".join(f"{n} relprop | {n} captum" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    methods_in_order = list(next(iter(results.values())))
    for method in methods_in_order:
        cells = []
        for name in names:
            reference = statistics.median(results[name]["gradient"][0])
            relprop_times, captum_times = results[name][method]
            cells += [cell(relprop_times, reference), cell(captum_times, reference)]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print()
    print("plain gradient, seconds: " + ", ".join(
        f"{name} {statistics.median(results[name]['gradient'][0]):.3f}" for name in names))


if __name__ == "__main__":
    main()
