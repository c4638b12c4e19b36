"""relprop.evaluate against Quantus 0.6: the same metric on the same model, inputs and relevance, in one process,
each library timed as a user calls it: from model, inputs and relevance to scores.

    .venv-quantus/bin/python benchmarks/bench_evaluate.py                     # vgg16, resnet50: 4 images, 224x224
    .venv-quantus/bin/python benchmarks/bench_evaluate.py --quick             # resnet18 at 64x64, a smoke run
    .venv-quantus/bin/python benchmarks/bench_evaluate.py --device cuda       # both libraries on a GPU

Runs in .venv-quantus (scripts/quantus_venv.sh), which holds both libraries (PYTHONPATH=src to time a checkout).
Models are torchvision's, randomly initialised with non-zero biases, in eval mode; relevance is relprop's
epsilon-LRP (flat rules would give ties, which the libraries order differently), pooled over channels for Quantus
(which broadcasts it over the channels), and Quantus is called with normalise=False, abs=False. Each metric's
numbers are compared (largest absolute difference) and both whole calls are timed alternately, --rounds times
(median). relprop's whole call builds its own Runner (the clean forward pass inside the timer, as Quantus's is);
rows named "Runner reused" time the metric on a Runner built beforehand, as benchmark() shares one per batch.
relprop's perturbation metrics are given the Explanation (as a user who just explained calls them), whose output is the
model's output on x, so they make no clean pass where their steps do not need its activations; the rows "relevance as a
tensor" give the relevance tensor alone: pixel flipping's perturbed scores (details["perturbed"], the numbers Quantus
returns) need no clean pass either, and the patch-wise metrics make their clean pass as the kept base their steps start
from (their floor and reused row are the rows above). Metrics whose numbers differ from Quantus's by definition (Quantus
0.6's monotonicity never restores x; sensitivity-n there removes features cumulatively where relprop draws random
subsets as Ancona et al.; random subsets and noise drawn differently) are timed with the same number of forward passes
and printed as "differ by definition"; the oracle tests check the ones that can agree. Quantus 0.6's ROAD fails on
3-channel images (it indexes the channel-broadcast relevance as pixels): its row says so. Quantus 0.6's infidelity
removes square patches (--selectivity-patch) cumulatively in raster order, where relprop's draws Gaussian perturbations
(Yeh et al.'s noisy baseline): timed with one perturbation per patch (a pass each; Quantus makes one more), and "differ
by definition". IROF runs on smooth random textures (SLIC finds a single superpixel in uniform noise, which Quantus
refuses), to a baseline of 0 with Quantus's mask broadcast over the channels (its IROF asserts the mask is shaped like
x), and relprop's score is compared as Quantus computes its own from the curve (L - trapezoid of f(x^(k)) / f(x), k =
1..L, the curves of samples with fewer superpixels padded with zeros). --channels-last runs relprop's plain passes as
channels-last copies at every image size (Runner(..., channels_last=True); by default the Runner does so from 224 px on,
see evaluate.runner.CHANNELS_LAST_FROM). --no-winograd runs relprop's passes with torch's own convolutions instead of
Winograd's for the wide 3x3 ones (Runner(..., winograd=False); see engine.winograd); the floor's unit still takes
the fastest plain pass. --steps-one-by-one runs each step of a chain as a pass of its own (Incremental.stepwise =
False), where by default up to 16 steps run as one pass, each op computing all their boxes (engine.together).

Patch-wise metrics (region perturbation, selectivity, IROF) are printed beside their floor: one plain forward pass
(timed here, in the same process, the fastest of as given, channels-last and channels-last with Winograd's
convolutions, see engine.winograd, their weights transformed in the timer as one pass from scratch must) for the clean
pass, plus per step the share of a plain pass's multiply-adds that the step's patch reaches in each layer (counted by
the incremental engine), at the rate of a plain pass whose weights were transformed before. "call / floor" divides
the median whole call by the floor; "fastest call / floor" divides the fastest round, like for like with the floor's
unit (the fastest of its timings): on a shared machine, where other jobs only ever add time, the two bracket the
ratio. Perturbation metrics run a few steps only (--steps; --regions for region perturbation), since each step is one
forward pass of the batch in both libraries.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings

import numpy as np
import torch
import torchvision

import relprop
from relprop import evaluate
from relprop.engine.winograd import Transforms, WinogradPasses


def setup(name, size, count, seed=0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.05)
    x = torch.rand(count, 3, size, size)
    target = model(x).argmax(1)
    explanation = relprop.explain(model, x, target=target, composite="epsilon")  # no ties (flat rules make them)
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for n in range(count):
        top = (n * size // (2 * count)) % (size // 2)
        masks[n, top:top + size // 3, size // 4:size // 2 + n] = True
    return model, x, target, explanation, masks


def metrics(model, x, target, explanation, masks, steps, sized, patch, regions, selectivity_patch, device):
    """name -> (relprop whole call returning numbers, Quantus whole call returning the same numbers, chain metric
    run on a given Runner or None); sized: the keyword arguments that set relprop's batch_size ({}: its default)."""
    import quantus

    n, channels, height, width = x.shape
    locations = height * width
    relevance = explanation.relevance.detach()
    pooled = relevance.sum(1, keepdim=True)
    x_np, y_np, a_np = x.cpu().numpy(), target.cpu().numpy(), pooled.cpu().numpy()
    s_np = masks[:, None].cpu().numpy().astype(np.float32)
    common = dict(normalise=False, abs=False, disable_warnings=True)
    # Quantus wants features_in_step to divide H*W; with relevance per value (channels apart, relprop's
    # channel_dim=None) a step of H*W*C/steps values is whole when steps is a multiple of the channels
    per_step = locations * channels // steps
    full = relevance.cpu().numpy()
    quadrants = [[int(q == n % 4 or q == (n + 1) % 4 and n % 2) for q in range(4)] for n in range(n)]  # Focus
    road_percentages = tuple(range(10, 100, 90 // steps))[:steps]
    spread = dataclasses.replace(explanation, relevance=pooled.expand_as(x) / channels)  # Sufficiency's relevance

    def q(metric, softmax=False, a=a_np):
        return lambda: np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a, s_batch=s_np,
                                         device=device, channel_first=True, softmax=softmax), dtype=np.float64)

    def r(call, pick):
        def whole():
            numbers = pick(call())
            return None if numbers is None else numbers.cpu().numpy()
        return whole

    def region(source, given=explanation):
        return evaluate.region_perturbation(source, x, given, target, patch_size=patch, steps=regions,
                                            softmax=True, **sized)

    def region_lerf(source, given=explanation):
        return evaluate.region_perturbation(source, x, given, target, patch_size=patch, steps=regions,
                                            order="lerf", softmax=True, **sized)

    def selectivity(source, given=explanation):
        return evaluate.selectivity(source, x, given, target, patch_size=selectivity_patch, softmax=True,
                                    **sized)

    textured = {}

    def smooth():
        """IROF's inputs: SLIC finds a single superpixel in uniform noise (Quantus then refuses the image), so IROF
        runs on smooth random textures (8x8 noise, bicubic to the size: about 90 superpixels each), explained as the
        others are; made once, when IROF first runs."""
        if not textured:
            generator = torch.Generator().manual_seed(1)
            coarse = torch.rand(n, channels, 8, 8, generator=generator)
            image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic",
                                                    align_corners=False).clamp(0, 1).to(x.device)
            with torch.inference_mode():
                label = model(image).argmax(1)
            explained = relprop.explain(model, image, target=label, composite="epsilon")
            textured.update(x=image, target=label, explanation=explained,
                            arrays=(image.cpu().numpy(), label.cpu().numpy(),
                                    explained.relevance.detach().sum(1, keepdim=True).cpu().numpy()))
        return textured

    def irof(source):
        t = smooth()
        return evaluate.irof(source, t["x"], t["explanation"], t["target"], baseline=0.0, softmax=True,
                             **sized)

    def quantus_irof():
        image, label, pooled_map = smooth()["arrays"]
        metric = quantus.IROF(perturb_func=broadcast_mask, perturb_baseline=0.0, return_aggregate=False, **common)
        return np.asarray(metric(model=model, x_batch=image, y_batch=label, a_batch=pooled_map, device=device,
                                 channel_first=True, softmax=True), dtype=np.float64)

    def broadcast_mask(arr, mask, **options):
        """Quantus 0.6's IROF hands a (N, 1, H, W) mask to a perturbation that asserts it is shaped like x."""
        return quantus.functions.perturb_func.baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape),
                                                                            **options)

    def irof_as_quantus(res):
        """Quantus's IROF score from relprop's curve: L - trapezoid(f(x^(k)) / f(x), k = 1..L), the curves of samples
        with fewer superpixels padded with zeros to the most any sample has, as Quantus pads them."""
        counts = res.details["segments"].long().tolist()
        curves = res.curves["morf"][:, 1:].double()
        padded = torch.stack([torch.cat([curves[n, :count], curves.new_zeros(max(counts) - count)])
                              for n, count in enumerate(counts)])
        return torch.tensor(counts, dtype=torch.float64) - ((padded[:, 1:] + padded[:, :-1]) / 2).sum(1)

    irof.inputs = lambda: (smooth()["x"], smooth()["target"])  # the floor's runners are built for these
    blocks = (height // selectivity_patch) * (width // selectivity_patch)  # Quantus's infidelity: one pass per block
    drops = lambda res: res.curves["morf"][:, :1] - res.curves["morf"][:, 1:]  # noqa: E731  (Quantus's numbers)
    drops_lerf = lambda res: res.curves["lerf"][:, :1] - res.curves["lerf"][:, 1:]  # noqa: E731
    after = lambda res: res.details["perturbed"]  # noqa: E731  (the curve without f(x): no clean pass to read it)
    scores = lambda res: res.scores  # noqa: E731
    unmatched = lambda res: None  # noqa: E731  (numbers that differ by definition: timed, not compared)
    return {
        f"pixel_flipping ({steps} steps)": (
            r(lambda: evaluate.pixel_flipping(model, x, explanation, target, regions_per_step=per_step, softmax=True,
                                              channel_dim=None, **sized), after),
            q(quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="black", **common), True, full),
            None),
        f"pixel_flipping ({steps} steps), relevance as a tensor": (
            r(lambda: evaluate.pixel_flipping(model, x, relevance, target, regions_per_step=per_step, softmax=True,
                                              channel_dim=None, **sized), after),
            q(quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="black", **common), True, full),
            None),
        f"region_perturbation ({patch}px patches, {regions} regions)": (
            r(lambda: region(model), drops),
            q(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, perturb_baseline="black",
                                         **common), True),
            region),
        f"region_perturbation ({patch}px patches, {regions} regions), relevance as a tensor": (
            r(lambda: region(model, relevance), drops),
            q(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, perturb_baseline="black",
                                         **common), True),
            region),
        f"region_perturbation LeRF ({patch}px patches, {regions} regions)": (
            r(lambda: region_lerf(model), drops_lerf),
            q(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, perturb_baseline="black",
                                         order="lerf", **common), True),
            region_lerf),
        f"selectivity ({selectivity_patch}px patches, all {blocks})": (
            r(lambda: selectivity(model), after),
            q(quantus.Selectivity(patch_size=selectivity_patch, perturb_baseline="black", **common), True),
            selectivity),
        f"selectivity ({selectivity_patch}px patches, all {blocks}), relevance as a tensor": (
            r(lambda: selectivity(model, relevance), after),
            q(quantus.Selectivity(patch_size=selectivity_patch, perturb_baseline="black", **common), True),
            selectivity),
        "irof (SLIC superpixels, baseline 0)": (
            r(lambda: irof(model), irof_as_quantus), quantus_irof, irof),
        f"infidelity ({blocks} perturbations)": (
            r(lambda: evaluate.infidelity(model, x, explanation, target, n_perturb_samples=blocks, softmax=True,
                                          **sized), unmatched),
            q(quantus.Infidelity(perturb_patch_sizes=[selectivity_patch], n_perturb_samples=1, perturb_baseline="black",
                                 **common), True), None),
        f"faithfulness_estimate ({steps} steps)": (
            r(lambda: evaluate.faithfulness_estimate(model, x, explanation, target, features_in_step=per_step,
                                                     channel_dim=None, softmax=True, **sized), scores),
            q(quantus.FaithfulnessEstimate(features_in_step=per_step, perturb_baseline="black", **common), True,
              full), None),
        f"monotonicity ({steps} steps)": (
            r(lambda: evaluate.monotonicity(model, x, explanation, target, features_in_step=per_step, channel_dim=None,
                                            softmax=True, **sized), unmatched),
            q(quantus.Monotonicity(features_in_step=per_step, perturb_baseline="black", normalise=False, abs=True,
                                   disable_warnings=True), True, full), None),
        f"sensitivity_n ({steps} subsets)": (
            r(lambda: evaluate.sensitivity_n(model, x, explanation, target, n=per_step, nr_runs=steps,
                                             channel_dim=None, softmax=True, **sized), unmatched),
            q(quantus.SensitivityN(features_in_step=per_step, n_max_percentage=1.0, perturb_baseline="black",
                                   return_aggregate=False, **common), True, full), None),
        f"road ({steps} percentages)": (
            r(lambda: evaluate.road(model, x, explanation, target, percentages=road_percentages, noise=0.01,
                                    softmax=True, **sized), unmatched),
            q(quantus.ROAD(noise=0.01, percentages=list(road_percentages), **common), True), None),
        f"faithfulness_correlation ({steps} subsets)": (
            r(lambda: evaluate.faithfulness_correlation(model, x, explanation, target, nr_runs=steps,
                                                        subset_size=height, channel_dim=None, softmax=True,
                                                        **sized), unmatched),
            q(quantus.FaithfulnessCorrelation(nr_runs=steps, subset_size=height, perturb_baseline="black",
                                              return_aggregate=False, **common), True, full), None),
        "sufficiency": (
            r(lambda: evaluate.sufficiency(model, x, spread, target, distance="seuclidean", **sized),
              scores),
            q(quantus.Sufficiency(threshold=0.6, distance_func="seuclidean", **common), True), None),
        "relevance_mass_accuracy": (
            r(lambda: evaluate.relevance_mass_accuracy(x, relevance, masks, pooling="sum"), scores),
            q(quantus.RelevanceMassAccuracy(**common)), None),
        "relevance_rank_accuracy": (
            r(lambda: evaluate.relevance_rank_accuracy(x, relevance, masks, pooling="sum"), scores),
            q(quantus.RelevanceRankAccuracy(**common)), None),
        "pointing_game": (r(lambda: evaluate.pointing_game(x, relevance, masks), scores),
                          q(quantus.PointingGame(**common)), None),
        "attribution_localisation": (
            r(lambda: evaluate.attribution_localisation(x, relevance, masks), scores),
            q(quantus.AttributionLocalisation(positive_attributions=True, **common)), None),
        "top_k_intersection": (r(lambda: evaluate.top_k_intersection(x, relevance, masks), scores),
                               q(quantus.TopKIntersection(**common)), None),
        "auc": (r(lambda: evaluate.auc(x, relevance, masks), scores), q(quantus.AUC(**common)), None),
        "focus": (r(lambda: evaluate.focus(x, relevance, quadrants), scores),
                  lambda: np.asarray(quantus.Focus(**common)(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                                                             device=device, channel_first=True,
                                                             custom_batch=quadrants), dtype=np.float64), None),
        "sparseness": (r(lambda: evaluate.sparseness(pooled.abs() + 1e-7, pooled.abs() + 1e-7), scores),
                       q(quantus.Sparseness(normalise=False, abs=True, disable_warnings=True)), None),
        "complexity": (r(lambda: evaluate.complexity(x, relevance), scores),
                       q(quantus.Complexity(normalise=False, abs=True, disable_warnings=True)), None),
        "effective_complexity": (
            r(lambda: evaluate.effective_complexity(x, relevance, eps=1e-5), scores),
            q(quantus.EffectiveComplexity(eps=1e-5, normalise=False, abs=True, disable_warnings=True)), None),
    }


def floor(model, x, target, sized, chain_metric, rounds):
    """(floor in seconds, seconds on a reused Runner, its chain plan). The floor: the clean pass as one plain forward
    from scratch (``plain_forward``'s fresh unit: Winograd's weights transformed in its timer, as any one forward by
    that method transforms them), plus per step the share of a plain pass's multiply-adds that the step's patch
    reaches, counted on a runner whose chains run incrementally throughout, at the rate of a plain forward whose
    weights were transformed before (both timed again here, beside the metric, as the load changes). The
    reused Runner is one as benchmark() builds it, its clean pass outside the timer: a new one each round, the median
    of the rounds (timed once, right after the counting run, ResNet-50's region perturbation read 2.446 s against the
    whole call's 1.980 s; in 3 rounds alternating with whole calls, 1.672 s against 1.853 s)."""
    forward_seconds, fresh_seconds = plain_forward(model, x, rounds)
    counting = evaluate.Runner(model, x, target, **sized, softmax=True, chains=True, incremental=True)
    chain_metric(counting)
    done, full = counting.chain_work
    steps = counting.incremental.passes["incremental"] * done / full if full else None
    lowest = None if steps is None else fresh_seconds + steps * forward_seconds
    elapsed = []
    for _ in range(rounds):
        runner = evaluate.Runner(model, x, target, **sized, softmax=True, chains=True)
        runner.output  # noqa: B018  (its clean pass, outside the timer, as benchmark() makes it)
        elapsed.append(timed(lambda: chain_metric(runner))[0])
    return lowest, statistics.median(elapsed), runner.chain_plan


def _to(explanation, device):
    """The explanation with its tensors on the device (its relevance, output and target are what metrics read)."""
    import dataclasses

    return dataclasses.replace(explanation, relevance=explanation.relevance.to(device),
                               output=explanation.output.to(device), target=explanation.target.to(device))


def timed(call):
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


FORWARD_ROUNDS = 5  # the least timings of a plain forward pass the floor's unit takes, whatever --rounds says


def plain_forward(model, x, rounds):
    """(steady, fresh): seconds of one plain forward pass of x (each the least of max(rounds, FORWARD_ROUNDS)
    timings: the floor's units), in the fastest of the ways relprop's passes may run it: as given and, for an image
    batch, channels-last (see evaluate.runner.CHANNELS_LAST_FROM and engine.incremental), also with its wide 3x3
    convolutions by Winograd's method (engine.winograd), so that the floor stays below what any of them allows.
    Steady: Winograd's weights transformed before the timer (the rate of many passes). Fresh: each timed pass makes
    its own transforms (one pass from scratch, as a metric's call makes its clean pass); torch's own layers need no
    set-up, so their timings serve both. With --rounds 1 the unit was a single timing: ResNet-50's IROF floor once
    read 18.2 s, a unit of 0.467 s, where the same run's table timed the pass at 0.391 s (a floor of 15.3 s)."""
    count = max(rounds, FORWARD_ROUNDS)
    batches = [x] + ([x.contiguous(memory_format=torch.channels_last)] if x.dim() == 4 else [])
    plain, steady, fresh = [], [], []
    with torch.inference_mode():
        for batch in batches:
            model(batch)
            plain.append(min(timed(lambda: model(batch))[0] for _ in range(count)))
        if x.dim() == 4:
            last = batches[-1]
            with WinogradPasses(Transforms()):
                model(last)
                steady.append(min(timed(lambda: model(last))[0] for _ in range(count)))
            fresh.append(min(timed(lambda: _from_scratch(model, last))[0] for _ in range(count)))
    return min(plain + steady), min(plain + fresh)


def _from_scratch(model, batch):
    """A plain pass with Winograd's convolutions whose weights it transforms itself."""
    with WinogradPasses(Transforms()):
        return model(batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="a multiple of 3 (see per_step)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patch", type=int, default=16, help="region perturbation's patch size")
    parser.add_argument("--regions", type=int, default=8, help="region perturbation's regions removed one by one")
    parser.add_argument("--selectivity-patch", type=int, default=32,
                        help="selectivity's patch size (Quantus removes every patch)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="relprop's copies per forward pass (default: relprop's own default, as users call it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: both libraries run there")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--channels-last", action="store_true",
                        help="relprop's plain passes as channels-last copies (to measure what that layout gives)")
    parser.add_argument("--no-winograd", action="store_true",
                        help="relprop's passes with torch's own convolutions (Runner(..., winograd=False))")
    parser.add_argument("--steps-one-by-one", action="store_true",
                        help="relprop's chain steps in a pass each, not several in one (see engine.together)")
    parser.add_argument("--only", nargs="+", default=None, metavar="METRIC",
                        help="run only the metrics whose names start with these (e.g. auc sparseness)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.size, args.patch, args.selectivity_patch = ["resnet18"], 64, 8, 16
    # relprop's metrics get batch_size only when --batch-size says one: else their default, as a user calls them
    sized = {} if args.batch_size is None else {"batch_size": args.batch_size}
    if args.channels_last:
        build = evaluate.Runner.__init__
        evaluate.Runner.__init__ = lambda self, *a, **k: build(self, *a, **{**k, "channels_last": True})
    if args.no_winograd:  # the metrics build their own Runners: every one of them told so
        make = evaluate.Runner.__init__
        evaluate.Runner.__init__ = lambda self, *a, **k: make(self, *a, **{**k, "winograd": False})
    if args.steps_one_by_one:  # every Incremental the metrics' Runners build runs its steps alone
        from relprop.engine.incremental import Incremental

        start = Incremental.__init__

        def one_by_one(self, *given, **options):
            start(self, *given, **options)
            self.stepwise = False
        Incremental.__init__ = one_by_one
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch threads {args.threads}, device {args.device}, {args.count} images at {args.size}x{args.size}, "
          f"{args.rounds} rounds (median)")
    print("| model | metric | relprop whole call (s) | Quantus whole call (s) | speed-up | floor (s) | call / floor "
          "| fastest call / floor | largest difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, x, target, explanation, masks = setup(name, args.size, args.count)
        model, x, target, masks = (t.to(args.device) for t in (model, x, target, masks))
        explanation = _to(explanation, args.device)
        forward, fresh = plain_forward(model, x, args.rounds)
        floors = {}
        print(f"| {name} | one plain forward pass of the {args.count} images (the fastest way) | {forward:.3f} "
              "| - | - | - | - | - | - |", flush=True)
        print(f"| {name} | the same from scratch (Winograd's weights transformed in the timer) | {fresh:.3f} "
              "| - | - | - | - | - | - |", flush=True)
        for metric, (ours, theirs, chain) in metrics(model, x, target, explanation, masks, args.steps, sized,
                                                     args.patch, args.regions, args.selectivity_patch,
                                                     args.device).items():
            if args.only and not any(metric.startswith(prefix) for prefix in args.only):
                continue
            if hasattr(chain, "inputs"):
                chain.inputs()  # the metric's own inputs and their explanation, made outside the timers
            times = {"relprop": [], "quantus": []}
            rounds = args.rounds
            failed = None
            while len(times["relprop"]) < rounds:
                elapsed, mine = timed(ours)
                times["relprop"].append(elapsed)
                try:
                    elapsed, reference = timed(theirs)
                except Exception as error:  # noqa: BLE001  (Quantus 0.6's ROAD indexes channels as pixels on RGB)
                    failed = f"{type(error).__name__}: {str(error)[:60]}"
                    break
                times["quantus"].append(elapsed)
                if len(times["relprop"]) == 1 and elapsed < 1.0:
                    rounds = max(rounds, 5)  # quick metrics get more rounds: their times are small and noisy
            if failed:
                print(f"| {name} | {metric} | {times['relprop'][0]:.3f} | Quantus fails ({failed}) | - | - | - | - "
                      "| - |", flush=True)
                continue
            ours_s, theirs_s = statistics.median(times["relprop"]), statistics.median(times["quantus"])
            difference = "differ by definition" if mine is None else \
                f"{float(np.max(np.abs(np.asarray(mine, dtype=np.float64) - reference))):.1e}"
            chain_x, chain_target = chain.inputs() if hasattr(chain, "inputs") else (x, target)
            first = chain is not None and chain not in floors  # a metric's rows share one floor and one reused row
            if first:
                floors[chain] = floor(model, chain_x, chain_target, sized, chain, args.rounds)
            lowest, reused, plan = floors[chain] if chain else (None, None, None)
            reused = reused if first else None
            bound = "-" if lowest is None else f"{lowest:.3f}"
            ratio = "-" if lowest is None else f"{ours_s / lowest:.2f}"
            best = "-" if lowest is None else f"{min(times['relprop']) / lowest:.2f}"  # like for like: see floor()
            print(f"| {name} | {metric} | {ours_s:.3f} | {theirs_s:.3f} | {theirs_s / ours_s:.2f}x | {bound} | "
                  f"{ratio} | {best} | {difference} |", flush=True)
            if reused is not None:
                share = "-" if plan["share"] is None else f"{plan['share']:.2f}"
                print(f"| {name} | {metric}, Runner reused (its clean pass outside the timer; chain {plan['choice']}, "
                      f"a step reaches {share} of the work) | {reused:.3f} | {theirs_s:.3f} | "
                      f"{theirs_s / reused:.2f}x | - | - | - | - |", flush=True)


if __name__ == "__main__":
    main()
