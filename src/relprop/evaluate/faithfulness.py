"""Faithfulness: does removing what relevance points at change the output as relevance says it should?

f(x) is the target's score: its logit, or its probability with softmax=True (softmax=None: the given Runner's
choice, else the logit). Removing a set S of locations replaces x_S
by a baseline (perturb.py). Regions are patches of ``patch_size`` locations (1: single pixels) or superpixels.

- Region perturbation / pixel flipping (Bach et al. 2015; Samek et al. 2017, "Evaluating the visualization of what a
  deep neural network has learned"): regions sorted by summed relevance, most relevant first (MoRF) or least
  relevant first (LeRF); x^(0) = x and x^(k) removes the first k * regions_per_step regions. The curve is
  f(x^(k)), k = 0..L.  AOPC = 1/(L+1) sum_{k=0}^{L} (f(x^(0)) - f(x^(k)));  AUC = trapezoid area under the curve
  on an x-axis from 0 to 1 (divided by L).
- Selectivity (Montavon et al. 2018, "Methods for interpreting and understanding deep neural networks"): the AUC of
  the MoRF curve of region perturbation (lower is better).
- Faithfulness correlation (Bhatt et al. 2020): Pearson correlation, over ``nr_runs`` random subsets S of
  ``subset_size`` locations, between sum_{i in S} R_i and f(x) - f(x with S removed).
- Faithfulness estimate (Alvarez-Melis & Jaakkola 2018, "Towards robust interpretability with self-explaining
  neural networks"): Pearson correlation between the relevance of each group of ``features_in_step`` locations
  (in MoRF order) and f(x) - f(x with only that group removed).
- Monotonicity (Arya et al. 2019, "One explanation does not fit all"): starting from the baseline, locations are
  put back in order of increasing |R|, ``features_in_step`` at a time; 1 if f never decreases, else 0.
- Sensitivity-n (Ancona et al. 2018, "Towards better understanding of gradient-based attribution methods"): for
  each subset size n, Pearson correlation over ``nr_runs`` random subsets S, |S| = n, between sum_{i in S} R_i and
  f(x) - f(x with S removed); the score averages over the n given.
- IROF (Rieger & Hansen 2020, "IROF: a low resource evaluation metric for explanation methods"): SLIC superpixels
  (scikit-image) sorted by mean relevance are removed cumulatively; the curve is f(x^(k)) / f(x), k = 0..L, and
  IROF is the area over it on an x-axis from 0 to 1: 1 - AUC.
- ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution methods"): the top p% of
  locations (MoRF) are replaced by noisy linear imputation: each removed value is the weighted mean of its 8
  neighbours (weight 1/6 direct, 1/12 diagonal), solved jointly for all removed values of a channel (conjugate
  gradients on the graph Laplacian), plus Gaussian noise of standard deviation ``noise``. The curve holds, per
  percentage, whether the target is still the predicted class; the score is its mean (lower is better for MoRF).
- Infidelity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations"): with Gaussian perturbations
  I ~ N(0, noise_std^2) of the input, E_I[(I . R - (f(x) - f(x - I)))^2], averaged over ``n_perturb_samples``.
- Sufficiency (Dasgupta et al. 2022, "Framework for evaluating faithfulness of local explanations"): per sample,
  among the other samples whose explanations lie within ``threshold`` (distances divided by the largest
  distance of the batch), the share predicted as the same class; 0 when there is none.
"""
from __future__ import annotations

import math

import torch

from .inputs import channel_axis, expand_locations, location_shape, pooled, relevance_of
from .perturb import Removal, baseline_values, masked_copies, patch_labels, ranks, region_relevance
from .result import Later, Result
from .runner import Runner, pair_generator


class _Setup:
    """What every perturbation metric starts from: the runner, the pooled relevance and the baseline."""

    def __init__(self, model, x, relevance, target, batch_size, softmax, channel_dim, baseline, seed=0,
                 output=None, blur_sigma=2.0, chains=False):
        self.runner = Runner.of(model, x, target, batch_size=batch_size, softmax=softmax, output=output,
                                relevance=relevance, chains=chains)
        self.x = self.runner.x
        self.axis = channel_axis(self.x, channel_dim)
        self.relevance = relevance_of(relevance, self.x)
        self.map = pooled(self.relevance, self.axis, "sum").double()
        self.locations = location_shape(self.x, self.axis)
        self.size = math.prod(self.locations)
        self.baseline = None if baseline is None else baseline_values(self.x, baseline, self.axis, seed, blur_sigma)


def _auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves (N, L+1) sampled at 0, 1/L, ..., 1."""
    steps = curve.shape[1] - 1
    if steps == 0:
        return curve[:, 0]
    return (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * steps)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per row; NaN where a row is constant."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _region_curve(setup: _Setup, labels, region_scores, order, regions_per_step, steps, max_steps=None):
    regions = region_scores.shape[1]
    if isinstance(regions_per_step, bool) or not isinstance(regions_per_step, int) or regions_per_step < 1:
        raise ValueError(f"regions_per_step must be a positive int, got {regions_per_step!r}")
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int or None (one step per regions_per_step regions), got "
                             f"{max_steps!r}")
        regions_per_step = max(regions_per_step, math.ceil(regions / max_steps))
    most = math.ceil(regions / regions_per_step)
    steps = most if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise ValueError(f"steps must be an int from 1 to {most} ({regions} regions, {regions_per_step} per step), "
                         f"got {steps!r}")
    counts = torch.arange(steps + 1) * regions_per_step
    removal = Removal(setup.x, setup.baseline, setup.axis, labels, ranks(region_scores, order), counts)
    # patches removed one by one change a small region per step: incremental passes (single pixels are scattered,
    # and so are several patches per step: their steps run as plain passes of stacked copies)
    chain = regions < setup.size and regions_per_step == 1
    perturbed = setup.runner.scores(steps, lambda rows, k: removal(rows, k + 1), chain=chain)
    return perturbed, regions_per_step


def _region_result(setup: _Setup, perturbed: torch.Tensor, metric: str, score: str, higher_is_better: bool,
                   order: str, parameters: dict) -> Result:
    """A region curve's Result: the curve starts at f(x), and it, AOPC and AUC are computed when first read, so that
    reading only details["perturbed"] needs no clean pass (Quantus's pixel flipping and selectivity make none)."""
    runner = setup.runner
    curve = Later(lambda: torch.cat([runner.clean.view(-1, 1), perturbed], 1))
    aopc = Later(lambda: (curve()[:, :1] - curve()).mean(1))
    auc = Later(lambda: _auc(curve()))
    return Result(metric, aopc if score == "aopc" else auc, higher_is_better, parameters, curves={order: curve},
                  details={"auc": auc, "aopc": aopc, "perturbed": perturbed})


def region_perturbation(model, x, relevance, target=None, *, patch_size=8, order="morf", regions_per_step=1,
                        steps=None, max_steps=None, baseline="black", batch_size=64, softmax=None,
                        channel_dim="auto", blur_sigma=2.0, seed=0, output=None) -> Result:
    """Region perturbation (Samek et al. 2017): AOPC per sample; curves and AUC in the result.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        patch_size: The side of the square regions removed together (an int, or a tuple per location dimension); 1
            removes single locations.
        order: "morf" (most relevant first) or "lerf" (least relevant first).
        regions_per_step: How many regions each step removes.
        steps: How many steps the curve takes; None removes every region.
        max_steps: Remove the regions in at most this many steps (ceil(regions / max_steps) per step, when that is
            more than regions_per_step): a coarser curve over the whole removal, each step one forward pass of the
            batch; None: regions_per_step regions a step.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        blur_sigma: The standard deviation, in locations, of the "blur" baseline.
        seed: Seeds every random draw of the metric, so its score repeats.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: AOPC per sample (higher is better for MoRF); the curve under curves[order], its AUC and AOPC under
        details, and the perturbed copies' scores alone (the curve without f(x)) under details["perturbed"]. The
        curve, AOPC and AUC start from f(x): where no pass made it yet (relevance given as a tensor, without the
        model's output), its forward pass runs when one of them is first read.

    Raises:
        ValueError: for an unknown baseline or order, or relevance that does not fit x.

    Example:
        >>> import torch
        >>> from relprop import evaluate
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> result = evaluate.region_perturbation(model, x, torch.rand_like(x), target=0, patch_size=2)
        >>> result.scores.shape
        torch.Size([2])
    """
    patches = any(size != 1 for size in ((patch_size,) if isinstance(patch_size, int) else patch_size))
    setup = _Setup(model, x, relevance, target, batch_size, softmax, channel_dim, baseline, seed, output, blur_sigma,
                   chains=patches and regions_per_step == 1 and max_steps is None)
    labels = patch_labels(setup.locations, patch_size)
    regions = int(labels.max()) + 1
    scores = region_relevance(setup.map, labels.expand((len(setup.x),) + setup.locations), regions)
    perturbed, regions_per_step = _region_curve(setup, labels, scores, order, regions_per_step, steps, max_steps)
    return _region_result(setup, perturbed, f"region_perturbation_{order}", "aopc", order == "morf", order,
                          {"patch_size": patch_size, "order": order, "regions_per_step": regions_per_step,
                           "steps": perturbed.shape[1], "baseline": _name(baseline),
                           "softmax": setup.runner.softmax})


def pixel_flipping(model, x, relevance, target=None, *, order="morf", regions_per_step=1, steps=None,
                   baseline="black", batch_size=64, softmax=None, channel_dim="auto", blur_sigma=2.0, seed=0,
                   output=None) -> Result:
    """Pixel flipping (Bach et al. 2015): region perturbation with single locations.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        order: "morf" (most relevant first) or "lerf" (least relevant first).
        regions_per_step: How many regions each step removes.
        steps: How many steps the curve takes; None removes every region.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        blur_sigma: The standard deviation, in locations, of the "blur" baseline.
        seed: Seeds every random draw of the metric, so its score repeats.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: AOPC per sample; the curve under curves[order], its AUC under details, the perturbed copies'
        scores alone under details["perturbed"] (reading only these makes no forward pass of the unperturbed x).
    """
    result = region_perturbation(model, x, relevance, target, patch_size=1, order=order,
                                 regions_per_step=regions_per_step, steps=steps, baseline=baseline,
                                 batch_size=batch_size, softmax=softmax, channel_dim=channel_dim,
                                 blur_sigma=blur_sigma, seed=seed, output=output)
    result.metric = f"pixel_flipping_{order}"
    return result


def selectivity(model, x, relevance, target=None, *, patch_size=8, max_steps=None, baseline="black", batch_size=64,
                softmax=None, channel_dim="auto", output=None) -> Result:
    """Selectivity (Montavon et al. 2018): AUC of the MoRF region perturbation curve; lower is better.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        patch_size: The side of the square regions removed together (an int, or a tuple per location dimension); 1
            removes single locations.
        max_steps: As region_perturbation's: the patches removed in at most this many steps (a coarser curve).
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: the AUC of the MoRF curve per sample (lower is better).
    """
    result = region_perturbation(model, x, relevance, target, patch_size=patch_size, max_steps=max_steps,
                                 baseline=baseline, batch_size=batch_size, softmax=softmax, channel_dim=channel_dim,
                                 output=output)
    return Result("selectivity", Later(lambda: result.details["auc"]), False, result.parameters, result.curves,
                  result.details)


def _random_subsets(count: int, size: int, runs: int, subset_size: int, seed: int, device) -> torch.Tensor:
    """(count, runs, subset_size) int64: runs random subsets of subset_size locations per sample, seeded."""
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or not 1 <= subset_size < size:
        raise ValueError(f"subset_size must be an int from 1 to {size - 1} (there are {size} locations), got "
                         f"{subset_size!r}")
    generator = torch.Generator().manual_seed(seed)
    # one sample at a time, so only runs x size random keys exist at once
    return torch.stack([torch.rand(runs, size, generator=generator).argsort(dim=1)[:, :subset_size]
                        for _ in range(count)]).to(device)


def _subset_correlation(setup: _Setup, subsets: torch.Tensor):
    """Per sample: Pearson over runs between subset relevance and the output drop when the subset is removed."""
    count, runs = subsets.shape[:2]
    flat = setup.map.flatten(1)
    relevance_sums = flat.gather(1, subsets.flatten(1)).view(subsets.shape).sum(2)
    shape = (-1,) + setup.locations

    def perturb(rows, k):
        chosen = subsets[rows.to(subsets.device), k.to(subsets.device)]
        masks = torch.zeros(len(rows), setup.size, dtype=torch.bool, device=chosen.device).scatter_(1, chosen, True)
        return masked_copies(setup.x, setup.baseline, setup.axis, rows, masks.view(shape))

    drops = setup.runner.clean.view(-1, 1) - setup.runner.scores(runs, perturb)
    return _pearson(relevance_sums, drops), relevance_sums, drops


def faithfulness_correlation(model, x, relevance, target=None, *, nr_runs=100, subset_size=224, baseline="black",
                             seed=0, batch_size=64, softmax=None, channel_dim="auto", output=None) -> Result:
    """Faithfulness correlation (Bhatt et al. 2020).

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        nr_runs: How many random subsets are drawn per sample.
        subset_size: How many locations each random subset removes.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        seed: Seeds every random draw of the metric, so its score repeats.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: the correlation per sample (higher is better); the relevance sums and output drops of each subset
        under details.
    """
    setup = _Setup(model, x, relevance, target, batch_size, softmax, channel_dim, baseline, seed, output)
    subsets = _random_subsets(len(setup.x), setup.size, nr_runs, subset_size, seed, setup.x.device)
    correlation, sums, drops = _subset_correlation(setup, subsets)
    return Result("faithfulness_correlation", correlation, True,
                  {"nr_runs": nr_runs, "subset_size": subset_size, "baseline": _name(baseline), "seed": seed},
                  details={"relevance_sums": sums, "output_drops": drops})


def sensitivity_n(model, x, relevance, target=None, *, n=(1, 2, 4, 8, 16, 32, 64), nr_runs=100, baseline="black",
                  seed=0, batch_size=64, softmax=None, channel_dim="auto", output=None) -> Result:
    """Sensitivity-n (Ancona et al. 2018): one correlation per subset size n, averaged.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        n: The subset sizes: an int or a sequence of ints.
        nr_runs: How many random subsets are drawn per sample.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        seed: Seeds every random draw of the metric, so its score repeats.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: the correlation averaged over the sizes, per sample; each size's under
        details['correlation_per_n'].
    """
    setup = _Setup(model, x, relevance, target, batch_size, softmax, channel_dim, baseline, seed, output)
    sizes = [n] if isinstance(n, int) else list(n)
    per_size = torch.stack([_subset_correlation(setup, _random_subsets(len(setup.x), setup.size, nr_runs, size,
                                                                       seed + i, setup.x.device))[0]
                            for i, size in enumerate(sizes)], 1)
    return Result("sensitivity_n", per_size.mean(1), True, {"n": sizes, "nr_runs": nr_runs, "seed": seed,
                                                            "baseline": _name(baseline)},
                  details={"correlation_per_n": per_size})


def _groups(setup: _Setup, features_in_step, key):
    """Locations in order of key (ascending), cut into groups of features_in_step: labels and group ranks."""
    if isinstance(features_in_step, bool) or not isinstance(features_in_step, int) or features_in_step < 1 \
            or setup.size % features_in_step:
        raise ValueError(f"features_in_step must be a positive int dividing the number of locations ({setup.size}), "
                         f"got {features_in_step!r}")
    order = key.argsort(dim=1, stable=True)
    position = torch.empty_like(order).scatter_(1, order, torch.arange(setup.size, device=order.device)
                                                .expand_as(order))
    return (position // features_in_step).view((-1,) + setup.locations), setup.size // features_in_step


def faithfulness_estimate(model, x, relevance, target=None, *, features_in_step=1, baseline="black", batch_size=64,
                          softmax=None, channel_dim="auto", output=None) -> Result:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola 2018).

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        features_in_step: How many locations each step removes or restores together.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: the correlation per sample (higher is better).
    """
    setup = _Setup(model, x, relevance, target, batch_size, softmax, channel_dim, baseline, 0, output)
    flat = setup.map.flatten(1)
    group, count = _groups(setup, features_in_step, -flat)
    group_relevance = region_relevance(setup.map, group, count)

    def perturb(rows, k):
        return masked_copies(setup.x, setup.baseline, setup.axis, rows,
                             group[rows.to(group.device)] == k.to(group.device).view((-1,) + (1,) * len(setup.locations)))

    drops = setup.runner.clean.view(-1, 1) - setup.runner.scores(count, perturb)
    return Result("faithfulness_estimate", _pearson(group_relevance, drops), True,
                  {"features_in_step": features_in_step, "baseline": _name(baseline)},
                  details={"output_drops": drops})


def monotonicity(model, x, relevance, target=None, *, features_in_step=1, baseline="black", batch_size=64,
                 softmax=None, channel_dim="auto", output=None) -> Result:
    """Monotonicity (Arya et al. 2019): 1 where adding locations by increasing |R| never lowers f.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        features_in_step: How many locations each step removes or restores together.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: 1.0 per monotone sample, else 0.0; the restoring curve under curves['restored'].

    Raises:
        ValueError: when features_in_step does not divide the number of locations.
    """
    setup = _Setup(model, x, relevance, target, batch_size, softmax, channel_dim, baseline, 0, output)
    group, count = _groups(setup, features_in_step, setup.map.flatten(1).abs())
    restored = lambda rows, k: group[rows.to(group.device)] <= k.to(group.device).view(  # noqa: E731
        (-1,) + (1,) * len(setup.locations))

    def perturb(rows, k):
        rows_d = rows.to(setup.x.device)
        return torch.where(expand_locations(restored(rows, k), setup.x, setup.axis), setup.x[rows_d],
                           setup.baseline[rows_d])

    curve = setup.runner.scores(count, perturb)
    monotone = (curve.diff(dim=1) >= 0).all(1).double()
    return Result("monotonicity", monotone, True, {"features_in_step": features_in_step, "baseline": _name(baseline)},
                  curves={"restored": curve})


def superpixels(x: torch.Tensor, **slic_options) -> torch.Tensor:
    """(N, H, W) int64 SLIC segments (scikit-image) of channels-first images, labels from 0.

    Args:
        x: The input batch, samples first (N, ...).
        **slic_options: Passed to skimage.segmentation.slic (e.g. n_segments, compactness).

    Returns:
        (N, H, W) int64 label maps.

    Raises:
        ImportError: without scikit-image.
        ValueError: for input that is not (N, C, H, W).
    """
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise ImportError("IROF needs scikit-image for SLIC superpixels: pip install 'relprop[evaluate]'") from None
    if x.dim() != 4:
        raise ValueError(f"IROF segments images (N, C, H, W); got shape {tuple(x.shape)}: pass segments= for other "
                         "inputs")
    options = {"start_label": 0, **slic_options}
    images = x.detach().cpu().double().movedim(1, -1).numpy()
    labels = [torch.from_numpy(slic(image, channel_axis=-1 if image.shape[-1] > 1 else None,
                                    **options).astype("int64")).reshape(image.shape[:2]) for image in images]
    return torch.stack(labels).to(x.device)


def irof(model, x, relevance, target=None, *, segments=None, baseline="mean", batch_size=64, softmax=None,
         channel_dim="auto", output=None, **slic_options) -> Result:
    """IROF (Rieger & Hansen 2020): 1 - AUC of f(x^(k)) / f(x) as superpixels go, most relevant (mean) first.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        segments: (N, H, W) integer label maps of the regions; None segments x with SLIC superpixels.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.
        **slic_options: Passed to superpixels when segments is None.

    Returns:
        A Result: 1 - AUC per sample (higher is better).

    Raises:
        ValueError: when segments is not shaped (N, H, W) like x's locations.
    """
    setup = _Setup(model, x, relevance, target, batch_size, softmax, channel_dim, baseline, 0, output, chains=True)
    labels = superpixels(setup.x, **slic_options) if segments is None else torch.as_tensor(segments).long()
    if tuple(labels.shape) != (len(setup.x),) + setup.locations:
        raise ValueError(f"segments must be shaped {(len(setup.x),) + setup.locations} (one label map per sample), "
                         f"got {tuple(labels.shape)}")
    labels = labels.to(setup.x.device)
    counts = [int(row.max()) + 1 for row in labels.flatten(1)]
    regions = max(counts)
    mean_relevance = region_relevance(setup.map, labels, regions, "mean")
    present = torch.zeros(len(labels), regions, dtype=torch.bool, device=labels.device).scatter_(
        1, labels.flatten(1), True)
    mean_relevance[~present] = -math.inf  # absent labels go last and remove nothing
    removal = Removal(setup.x, setup.baseline, setup.axis, labels, ranks(mean_relevance, "morf"),
                      torch.arange(regions + 1))
    scores = setup.runner.scores(regions, lambda rows, k: removal(rows, k + 1), chain=True)
    curve = torch.cat([setup.runner.clean.view(-1, 1), scores], 1) / setup.runner.clean.view(-1, 1)
    aoc = torch.stack([1 - _auc(curve[n:n + 1, :count + 1])[0] for n, count in enumerate(counts)])
    return Result("irof", aoc, True, {"baseline": _name(baseline), "slic": slic_options},
                  curves={"morf": curve}, details={"segments": torch.tensor(counts, dtype=torch.float64)})


# ROAD's neighbour weights (Rong et al. 2022): direct neighbours 1/6, diagonal ones 1/12.
_ROAD_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def noisy_linear_imputation(images: torch.Tensor, removed: torch.Tensor, noise: float, generators=None,
                            tolerance: float = 1e-20, max_iterations: int = 5000) -> torch.Tensor:
    """Images (n, C, H, W) whose removed pixels (n, H, W) are the weighted means of their neighbours, plus noise.

    The removed values u solve (D - W_uu) u = W_uk x_k per channel, D the weight of each pixel's neighbours inside
    the image; conjugate gradients on all images and channels at once (the matrix is symmetric positive definite
    where every removed region touches a kept pixel; a region without any is left at zero).

    Args:
        images: The images (n, C, H, W).
        removed: (n, H, W) booleans, True where a pixel is removed.
        noise: The standard deviation of the Gaussian noise added to removed pixels (0: none).
        generators: One torch.Generator per image for the noise (needed when noise is not 0).
        tolerance: Conjugate gradients stop once the squared residual falls below this share of the right-hand
            side's.
        max_iterations: The most conjugate-gradient iterations.

    Returns:
        The imputed images, shaped like images.
    """
    n, channels, height, width = images.shape
    kernel = _ROAD_KERNEL.to(images).view(1, 1, 3, 3)
    flat = images.reshape(n * channels, 1, height, width)
    unknown = removed.to(images.dtype).repeat_interleave(channels, 0).unsqueeze(1)
    conv = lambda t: torch.nn.functional.conv2d(t, kernel, padding=1)  # noqa: E731
    degree = conv(torch.ones_like(unknown))

    def apply(v):
        return unknown * (degree * v - conv(unknown * v))

    rhs = unknown * conv((1 - unknown) * flat)
    solution = torch.zeros_like(flat)
    residual = rhs.clone()
    direction = residual.clone()
    rr = (residual * residual).sum((1, 2, 3), keepdim=True)
    target = tolerance * (rhs * rhs).sum((1, 2, 3), keepdim=True).clamp(min=1e-30)
    for _ in range(max_iterations):
        active = rr > target  # converged systems stop moving, so a result does not depend on its batch
        if not bool(active.any()):
            break
        a_direction = apply(direction)
        denominator = (direction * a_direction).sum((1, 2, 3), keepdim=True)
        step = torch.where(active & (denominator > 0), rr / denominator.clamp(min=1e-300), torch.zeros_like(rr))
        solution = solution + step * direction
        residual = residual - step * a_direction
        rr_new = (residual * residual).sum((1, 2, 3), keepdim=True)
        direction = torch.where(active, residual + rr_new / rr.clamp(min=1e-300) * direction, direction)
        rr = torch.where(active, rr_new, rr)
    filled = flat * (1 - unknown) + solution * unknown
    if noise:
        draws = torch.stack([torch.randn(channels, height, width, generator=g, dtype=images.dtype, device="cpu")
                             for g in generators]).to(images.device).reshape_as(flat)
        filled = filled + noise * draws * unknown
    return filled.reshape(images.shape)


def road(model, x, relevance, target=None, *, percentages=tuple(range(10, 100, 10)), noise=0.01, order="morf",
         seed=0, batch_size=64, softmax=None, channel_dim="auto", output=None) -> Result:
    """ROAD (Rong et al. 2022): accuracy after removing the top p% by noisy linear imputation, per percentage.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        percentages: The percentages of locations removed, each strictly between 0 and 100.
        noise: The standard deviation of the noise added to imputed values.
        order: "morf" (most relevant first) or "lerf" (least relevant first).
        seed: Seeds every random draw of the metric, so its score repeats.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: the share of percentages at which the prediction stays the target, per sample; accuracy and score
        curves under curves.

    Raises:
        ValueError: for input that is not an image batch (N, C, H, W), or percentages outside (0, 100).
    """
    setup = _Setup(model, x, relevance, target, batch_size, softmax, channel_dim, None, seed, output)
    if setup.x.dim() != 4 or setup.axis != 1:
        raise ValueError("ROAD imputes images (N, C, H, W) from their neighbours; use region_perturbation for other "
                         "inputs")
    percentages = list(percentages)
    if not percentages or any(not 0 < p < 100 for p in percentages):
        raise ValueError(f"percentages must lie strictly between 0 and 100, got {percentages}")
    counts = torch.tensor([int(setup.size * p / 100) for p in percentages])
    rank = ranks(setup.map.flatten(1), order).view((-1,) + setup.locations)

    def perturb(rows, k):
        rows_d = rows.to(setup.x.device)
        removed = rank[rows_d] < counts.to(rank.device)[k.to(rank.device)].view(-1, 1, 1)
        generators = [pair_generator(seed, int(r), int(s), "cpu") for r, s in zip(rows, k)]
        return noisy_linear_imputation(setup.x[rows_d], removed, noise, generators)

    runner = setup.runner
    scores, predicted = runner.scores(len(percentages), perturb, classes=True)
    accuracy = (predicted == runner.target.view(-1, 1)).double()
    return Result(f"road_{order}", accuracy.mean(1), order != "morf",
                  {"percentages": percentages, "noise": noise, "order": order, "seed": seed},
                  curves={"accuracy": accuracy, "score": scores})


def infidelity(model, x, relevance, target=None, *, n_perturb_samples=10, noise_std=0.1, seed=0, batch_size=64,
               softmax=None, output=None) -> Result:
    """Infidelity (Yeh et al. 2019) with Gaussian perturbations I: E[(I . R - (f(x) - f(x - I)))^2].

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        n_perturb_samples: How many Gaussian perturbations are drawn per sample.
        noise_std: Their standard deviation.
        seed: Seeds every random draw of the metric, so its score repeats.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        softmax: Score the target's softmax probability instead of its logit; None keeps a given Runner's choice,
            else the logit.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: the mean squared error per sample (lower is better).
    """
    setup = _Setup(model, x, relevance, target, batch_size, softmax, None, None, seed, output)

    def noise(rows, k):
        return torch.stack([torch.randn(setup.x.shape[1:], generator=pair_generator(seed, int(r), int(s), "cpu"),
                                        dtype=setup.x.dtype) for r, s in zip(rows, k)]).to(setup.x.device) * noise_std

    def perturb(rows, k):
        return setup.x[rows.to(setup.x.device)] - noise(rows, k)

    drops = setup.runner.clean.view(-1, 1) - setup.runner.scores(n_perturb_samples, perturb)
    rows = torch.arange(len(setup.x)).repeat_interleave(n_perturb_samples)
    steps = torch.arange(n_perturb_samples).repeat(len(setup.x))
    dots = torch.cat([(noise(r, s).flatten(1).double() * setup.relevance[r.to(setup.x.device)].flatten(1).double())
                      .sum(1) for r, s in zip(rows.split(setup.runner.batch_size), steps.split(setup.runner.batch_size))])
    errors = (dots.view(len(setup.x), n_perturb_samples) - drops) ** 2
    return Result("infidelity", errors.mean(1), False, {"n_perturb_samples": n_perturb_samples,
                                                        "noise_std": noise_std, "seed": seed})


def sufficiency(model, x, relevance, target=None, *, threshold=0.6, distance="euclidean", batch_size=64,
                output=None) -> Result:
    """Sufficiency (Dasgupta et al. 2022): agreement of predictions among samples with nearby explanations.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        threshold: Explanations whose distance, divided by the batch's largest, is at most this are near.
        distance: "euclidean", or "seuclidean" (each feature scaled by its standard deviation over the batch).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: per sample, the share of near samples predicted as its class (0 when none is near).

    Raises:
        ValueError: for another distance.
    """
    runner = Runner.of(model, x, target, batch_size=batch_size, output=output, relevance=relevance, scored=False)
    a = relevance_of(relevance, runner.x).flatten(1).double()
    if distance == "seuclidean":  # each feature scaled by its variance over the batch, as scipy's cdist does
        a = a / a.var(0, unbiased=True).sqrt()
    elif distance != "euclidean":
        raise ValueError(f"distance must be 'euclidean' or 'seuclidean', got {distance!r}")
    distances = torch.cdist(a, a)
    distances = distances / distances.abs().max()
    near = (distances <= threshold) & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
    predicted = runner.output.argmax(1)
    same = predicted.view(1, -1) == predicted.view(-1, 1)
    counts = near.sum(1)
    scores = torch.where(counts > 0, (near & same).sum(1) / counts.clamp(min=1), torch.zeros_like(counts,
                                                                                              dtype=torch.float64))
    return Result("sufficiency", scores.double(), True, {"threshold": threshold, "distance": distance})


def _name(baseline):
    return f"tensor{tuple(baseline.shape)}" if isinstance(baseline, torch.Tensor) else baseline
