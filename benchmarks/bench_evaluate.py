"""relprop.evaluate against Quantus 0.6: the same metric on the same model, inputs and relevance, in one process.

    .venv-quantus/bin/python benchmarks/bench_evaluate.py            # vgg16 and resnet50, 8 images, 224x224, CPU
    .venv-quantus/bin/python benchmarks/bench_evaluate.py --quick    # resnet18 at 64x64, for a smoke run

Runs in .venv-quantus (scripts/quantus_venv.sh), which holds both libraries. Models are torchvision's, randomly
initialised with non-zero biases, in eval mode; relevance is relprop's epsilon-LRP (flat rules would give ties, which
the libraries order differently), pooled over channels for
Quantus (which broadcasts it over the channels), and Quantus is called with normalise=False, abs=False. Each
metric's numbers are compared (largest absolute difference) and timed as the median over --rounds. Perturbation
metrics run a few steps only (--steps; 4 regions for region perturbation and selectivity), since each step is one
forward pass of the whole batch in both libraries and Quantus takes minutes per metric at 224x224 on two shared
cores. Metrics under a second get at least five rounds. Each relprop metric is timed with the runner's memory of
scored copies cleared, except the row of selectivity run again on the same runner (the copies it remembers).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
import torchvision

import relprop
from relprop import evaluate


def setup(name, size, count, seed=0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.05)
    x = torch.rand(count, 3, size, size)
    target = model(x).argmax(1)
    relevance = relprop.explain(model, x, target=target, composite="epsilon").relevance.detach()  # no ties (flat rules make them)
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for n in range(count):
        top = (n * size // (2 * count)) % (size // 2)
        masks[n, top:top + size // 3, size // 4:size // 2 + n] = True
    return model, x, target, relevance, masks


def metrics(model, x, target, relevance, masks, steps, batch_size, runner, patch, regions, selectivity_patch):
    """name -> (relprop call returning numbers, Quantus call returning the same numbers).

    relprop's perturbation metrics share one Runner (its clean forward pass is timed separately, once); Quantus
    has no such sharing, and its region perturbation and faithfulness estimate run the clean pass each time."""
    import quantus

    n, channels, height, width = x.shape
    locations = height * width
    pooled = relevance.sum(1, keepdim=True)
    x_np, y_np, a_np = x.numpy(), target.numpy(), pooled.numpy()
    s_np = masks[:, None].numpy().astype(np.float32)
    common = dict(normalise=False, abs=False, disable_warnings=True)
    # Quantus wants features_in_step to divide H*W; with relevance per value (channels apart, relprop's
    # channel_dim=None) a step of H*W*C/steps values is whole when steps is a multiple of the channels
    per_step = locations * channels // steps
    full = relevance.numpy()
    quadrants = [[int(q == n % 4 or q == (n + 1) % 4 and n % 2) for q in range(4)] for n in range(n)]  # Focus

    def q(metric, softmax=False, a=a_np):
        return lambda: np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a, s_batch=s_np,
                                         device="cpu", channel_first=True, softmax=softmax), dtype=np.float64)

    def r(call, pick, remember=False):
        def timed():
            if not remember:
                runner.seen.clear()  # each metric's own forward passes, not those of the metric before it
            return pick(call()).numpy()
        return timed

    return {
        f"pixel_flipping ({steps} steps)": (
            r(lambda: evaluate.pixel_flipping(runner, x, relevance, regions_per_step=per_step, softmax=True,
                                              channel_dim=None, batch_size=batch_size),
              lambda res: res.curves["morf"][:, 1:]),
            q(quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="black", **common), True, full)),
        f"region_perturbation ({patch}px patches, {regions} regions)": (
            r(lambda: evaluate.region_perturbation(runner, x, relevance, patch_size=patch, steps=regions, softmax=True,
                                                   batch_size=batch_size),
              lambda res: res.curves["morf"][:, :1] - res.curves["morf"][:, 1:]),
            q(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, perturb_baseline="black",
                                         **common), True)),
        f"selectivity ({selectivity_patch}px patches, all {(height // selectivity_patch) ** 2})": (
            r(lambda: evaluate.selectivity(runner, x, relevance, patch_size=selectivity_patch, softmax=True,
                                           batch_size=batch_size), lambda res: res.curves["morf"][:, 1:]),
            q(quantus.Selectivity(patch_size=selectivity_patch, perturb_baseline="black", **common), True)),
        f"selectivity ({selectivity_patch}px patches) again on the same runner (its scored copies remembered)": (
            r(lambda: evaluate.selectivity(runner, x, relevance, patch_size=selectivity_patch, softmax=True,
                                           batch_size=batch_size), lambda res: res.curves["morf"][:, 1:], True),
            q(quantus.Selectivity(patch_size=selectivity_patch, perturb_baseline="black", **common), True)),
        f"faithfulness_estimate ({steps} steps)": (
            r(lambda: evaluate.faithfulness_estimate(runner, x, relevance, features_in_step=per_step,
                                                     channel_dim=None, batch_size=batch_size),
              lambda res: res.scores),
            q(quantus.FaithfulnessEstimate(features_in_step=per_step, perturb_baseline="black", **common), True,
              full)),
        "relevance_mass_accuracy": (
            r(lambda: evaluate.relevance_mass_accuracy(x, relevance, masks, pooling="sum"), lambda res: res.scores),
            q(quantus.RelevanceMassAccuracy(**common))),
        "relevance_rank_accuracy": (
            r(lambda: evaluate.relevance_rank_accuracy(x, relevance, masks, pooling="sum"), lambda res: res.scores),
            q(quantus.RelevanceRankAccuracy(**common))),
        "pointing_game": (r(lambda: evaluate.pointing_game(x, relevance, masks), lambda res: res.scores),
                          q(quantus.PointingGame(**common))),
        "attribution_localisation": (
            r(lambda: evaluate.attribution_localisation(x, relevance, masks), lambda res: res.scores),
            q(quantus.AttributionLocalisation(positive_attributions=True, **common))),
        "top_k_intersection": (r(lambda: evaluate.top_k_intersection(x, relevance, masks), lambda res: res.scores),
                               q(quantus.TopKIntersection(**common))),
        "auc": (r(lambda: evaluate.auc(x, relevance, masks), lambda res: res.scores), q(quantus.AUC(**common))),
        "focus": (r(lambda: evaluate.focus(x, relevance, quadrants), lambda res: res.scores),
                  lambda: np.asarray(quantus.Focus(**common)(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                                                             device="cpu", channel_first=True, custom_batch=quadrants),
                                     dtype=np.float64)),
        "sparseness": (r(lambda: evaluate.sparseness(pooled.abs() + 1e-7, pooled.abs() + 1e-7),
                         lambda res: res.scores),
                       q(quantus.Sparseness(normalise=False, abs=True, disable_warnings=True))),
        "complexity": (r(lambda: evaluate.complexity(x, relevance), lambda res: res.scores),
                       q(quantus.Complexity(normalise=False, abs=True, disable_warnings=True))),
        "effective_complexity": (
            r(lambda: evaluate.effective_complexity(x, relevance, eps=1e-5), lambda res: res.scores),
            q(quantus.EffectiveComplexity(eps=1e-5, normalise=False, abs=True, disable_warnings=True))),
    }


def timed(call):
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="a multiple of 3 (see per_step)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--patch", type=int, default=16, help="region perturbation's patch size")
    parser.add_argument("--regions", type=int, default=8, help="region perturbation's regions removed one by one")
    parser.add_argument("--selectivity-patch", type=int, default=32,
                        help="selectivity's patch size (Quantus removes every patch)")
    parser.add_argument("--plain", action="store_true",
                        help="relprop without incremental passes (each perturbed copy runs the whole model)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="relprop's copies per forward pass (8: as many as Quantus's pass of the batch per step; "
                             "on a CPU ResNet-50 runs 0.11 s per image in passes of 8, 0.16 s in passes of 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", default=None, metavar="METRIC",
                        help="run only the metrics whose names start with these (e.g. auc sparseness)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.size, args.count, args.patch, args.selectivity_patch = ["resnet18"], 64, 4, 8, 16
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"| model | metric | relprop (s) | Quantus (s) | speed-up | largest difference |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model, x, target, relevance, masks = setup(name, args.size, args.count)
        elapsed, runner = timed(lambda: evaluate.Runner(model, x, target, batch_size=args.batch_size, softmax=True,
                                                             incremental=not args.plain))
        print(f"| {name} | relprop's clean forward pass, shared by its perturbation metrics | {elapsed:.3f} | - | - "
              "| - |", flush=True)
        for metric, (ours, theirs) in metrics(model, x, target, relevance, masks, args.steps, args.batch_size,
                                              runner, args.patch, args.regions, args.selectivity_patch).items():
            if args.only and not any(metric.startswith(prefix) for prefix in args.only):
                continue
            times = {"relprop": [], "quantus": []}
            rounds = args.rounds
            while len(times["relprop"]) < rounds:
                elapsed, mine = timed(ours)
                times["relprop"].append(elapsed)
                elapsed, reference = timed(theirs)
                times["quantus"].append(elapsed)
                if len(times["relprop"]) == 1 and elapsed < 1.0:
                    rounds = max(rounds, 5)  # quick metrics get more rounds: their times are small and noisy
            ours_s, theirs_s = statistics.median(times["relprop"]), statistics.median(times["quantus"])
            difference = float(np.max(np.abs(np.asarray(mine, dtype=np.float64) - reference)))
            print(f"| {name} | {metric} | {ours_s:.3f} | {theirs_s:.3f} | {theirs_s / ours_s:.1f}x | "
                  f"{difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
