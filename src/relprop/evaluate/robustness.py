"""Robustness: do explanations stay put when the input barely moves?

Perturbed copies x' of each sample are explained in batches of ``batch_size`` (never all at once) with the same
target, and only per-copy distances are kept.

- Max- and average-sensitivity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations"): with
  x' = x + u, u uniform in [-lower_bound, lower_bound]^d, max (average) over ``nr_samples`` copies of
  ||Phi(x') - Phi(x)|| / ||Phi(x)|| (Frobenius norms of the relevance).
- Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, "On the robustness of interpretability methods"): with
  x' = x + N(0, perturb_std^2), max over copies of ||Phi(x) - Phi(x')||_2 / ||x - x'||_2.
"""
from __future__ import annotations

import torch

from .inputs import check_input
from .methods import explainer, relevance
from .result import Result
from .runner import pair_generator


def _copies(explain, model, x, target, nr_samples, batch_size, noise, distance, seed):
    """(N, nr_samples) distances between each sample's explanation and those of its perturbed copies."""
    base = relevance(explain, model, x, target).double()
    rows = torch.arange(len(x)).repeat_interleave(nr_samples)
    steps = torch.arange(nr_samples).repeat(len(x))
    out = []
    for r, s in zip(rows.split(batch_size), steps.split(batch_size)):
        shift = torch.stack([noise(pair_generator(seed, int(i), int(j), "cpu"), x.shape[1:])
                             for i, j in zip(r, s)]).to(x)
        copies = x[r.to(x.device)] + shift
        changed = relevance(explain, model, copies, target[r.to(target.device)]).double()
        out.append(distance(base[r.to(x.device)], changed, shift.double()))
    return torch.cat(out).view(len(x), nr_samples)


def _targets(model, x, target, batch_size):
    with torch.no_grad():
        output = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    return output.argmax(1) if target is None else torch.as_tensor(target).long().expand(len(x)).to(output.device)


def _sensitivity(model, x, target, explain, nr_samples, lower_bound, seed, batch_size):
    x = check_input(x)
    target = _targets(model, x, target, batch_size)
    uniform = lambda g, shape: (torch.rand(shape, generator=g, dtype=x.dtype) * 2 - 1) * lower_bound  # noqa: E731

    def ratio(a, b, shift):
        return (b - a).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)

    return _copies(explainer(explain), model, x, target, nr_samples, batch_size, uniform, ratio, seed)


def max_sensitivity(model, x, target=None, explain="epsilon_plus_flat", *, nr_samples=200, lower_bound=0.2, seed=0,
                    batch_size=64) -> Result:
    """Max-sensitivity (Yeh et al. 2019); lower is better.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        target: The class explained: an int or one int per sample; None: the class the model predicts.
        explain: The explanation method to rerun on the changed model or input: a callable ``explain(model, x,
            target)`` returning relevance, or a method by name as relprop.evaluate.benchmark takes it.
        nr_samples: How many perturbed copies of each sample are explained.
        lower_bound: The half-width of the uniform noise added to every input value.
        seed: Seeds every random draw of the metric, so its score repeats.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).

    Returns:
        A Result: the largest relative change of the explanation per sample.
    """
    ratios = _sensitivity(model, x, target, explain, nr_samples, lower_bound, seed, batch_size)
    return Result("max_sensitivity", ratios.amax(1), False, {"nr_samples": nr_samples, "lower_bound": lower_bound,
                                                             "seed": seed})


def avg_sensitivity(model, x, target=None, explain="epsilon_plus_flat", *, nr_samples=200, lower_bound=0.2, seed=0,
                    batch_size=64) -> Result:
    """Average sensitivity (Yeh et al. 2019); lower is better.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        target: The class explained: an int or one int per sample; None: the class the model predicts.
        explain: The explanation method to rerun on the changed model or input: a callable ``explain(model, x,
            target)`` returning relevance, or a method by name as relprop.evaluate.benchmark takes it.
        nr_samples: How many perturbed copies of each sample are explained.
        lower_bound: The half-width of the uniform noise added to every input value.
        seed: Seeds every random draw of the metric, so its score repeats.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).

    Returns:
        A Result: the mean relative change of the explanation per sample.
    """
    ratios = _sensitivity(model, x, target, explain, nr_samples, lower_bound, seed, batch_size)
    return Result("avg_sensitivity", ratios.mean(1), False, {"nr_samples": nr_samples, "lower_bound": lower_bound,
                                                             "seed": seed})


def local_lipschitz_estimate(model, x, target=None, explain="epsilon_plus_flat", *, nr_samples=200, perturb_std=0.1,
                             seed=0, batch_size=64) -> Result:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018); lower is better.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        target: The class explained: an int or one int per sample; None: the class the model predicts.
        explain: The explanation method to rerun on the changed model or input: a callable ``explain(model, x,
            target)`` returning relevance, or a method by name as relprop.evaluate.benchmark takes it.
        nr_samples: How many perturbed copies of each sample are explained.
        perturb_std: The standard deviation of the Gaussian noise added.
        seed: Seeds every random draw of the metric, so its score repeats.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).

    Returns:
        A Result: the largest ratio of explanation change to input change per sample.
    """
    x = check_input(x)
    target = _targets(model, x, target, batch_size)
    gaussian = lambda g, shape: torch.randn(shape, generator=g, dtype=x.dtype) * perturb_std  # noqa: E731

    def ratio(a, b, shift):
        return (a - b).flatten(1).norm(dim=1) / shift.flatten(1).norm(dim=1)

    ratios = _copies(explainer(explain), model, x, target, nr_samples, batch_size, gaussian, ratio, seed)
    return Result("local_lipschitz_estimate", ratios.amax(1), False,
                  {"nr_samples": nr_samples, "perturb_std": perturb_std, "seed": seed})
