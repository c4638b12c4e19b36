"""Axiomatic properties an explanation may satisfy.

- Completeness (Sundararajan et al. 2017, "Axiomatic attribution for deep networks"; conservation in LRP, Bach et
  al. 2015): sum_i R_i = f(x) - f(x_baseline). The score is the residual |f(x) - f(x_baseline) - sum_i R_i|; for a
  relprop Explanation without a baseline it is |delta| (explained - relevance sum). ``details["relative"]``
  divides by |f(x) - f(x_baseline)|.
- Input invariance (Kindermans et al. 2019, "The (un)reliability of saliency methods"): a constant shift c of the
  input, compensated by the first layer's bias (b' = b - W c), leaves the model's function unchanged; an
  input-invariant explanation does not change either. The score is 1 where the maps of (model, x) and
  (shifted model, x + c) agree within ``tolerance`` (relative L-infinity), else 0.
- Non-sensitivity (Nguyen & Martinez 2020): locations whose removal does not change f (|delta f| <= eps) should
  have zero relevance (|R_i| <= eps) and vice versa; the score counts locations where the two disagree.
"""
from __future__ import annotations

import copy

import torch

from .inputs import channel_axis, check_input, location_shape, pooled, relevance_of
from .methods import explainer, relevance
from .perturb import baseline_values, masked_copies
from .result import Result
from .runner import Runner


def completeness(model, x, relevance_, target=None, *, baseline=None, batch_size=64, output=None) -> Result:
    """Completeness residual per sample (lower is better).

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance_: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        baseline: The input the output is compared against, f(x) - f(baseline): a number, a tensor or a named
            baseline as region_perturbation takes it; None uses an Explanation's own delta when it has one, else
            zeros.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: the absolute residual per sample; relative residual, explained output and relevance sum under
        details.
    """
    runner = Runner.of(model, x, target, batch_size=batch_size, output=output, relevance=relevance_)
    total = relevance_of(relevance_, runner.x).flatten(1).double().sum(1)
    delta = getattr(relevance_, "delta", None)
    if baseline is None and isinstance(delta, torch.Tensor):
        explained = relevance_.explained.double().to(total.device)
        residual = delta.double().abs().to(total.device)
    else:
        reference = baseline_values(runner.x, 0.0 if baseline is None else baseline, None)
        explained = runner.clean - runner.pick(runner.outputs(reference.contiguous()), runner.target)
        residual = (explained - total).abs()
    return Result("completeness", residual, False, {"baseline": "delta" if baseline is None and delta is not None
                                                    else baseline},
                  details={"relative": residual / explained.abs(), "explained": explained, "relevance_sum": total})


def _first_layer(model):
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            return name, module
    raise ValueError("input_invariance needs a model whose first layer is nn.Linear or nn.ConvNd")


def input_invariance(model, x, target=None, explain="epsilon_plus_flat", *, shift=1.0, tolerance=1e-3,
                     batch_size=64) -> Result:
    """Input invariance (Kindermans et al. 2019): 1 where the explanation ignores a compensated input shift.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        target: The class explained: an int or one int per sample; None: the class the model predicts.
        explain: The explanation method to rerun on the changed model or input: a callable ``explain(model, x,
            target)`` returning relevance, or a method by name as relprop.evaluate.benchmark takes it.
        shift: The constant added to every input value (the copy's first-layer bias compensates it).
        tolerance: The largest absolute difference of relevance still counted as equal.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).

    Returns:
        A Result: 1.0 per sample whose explanation is unchanged, else 0.0.

    Raises:
        ValueError: for a model whose first layer is not nn.Linear or nn.ConvNd, or pads its input.
    """
    x = check_input(x)
    name, first = _first_layer(model)
    padding = getattr(first, "padding", (0,))
    if padding == "same" or (not isinstance(padding, str) and any(padding)):
        raise ValueError(f"input_invariance: the first layer {name!r} pads its input, so a bias cannot compensate an "
                         "input shift at the borders; use a model whose first layer does not pad")
    shifted = copy.deepcopy(model)
    layer = dict(shifted.named_modules())[name]
    with torch.no_grad():
        constant = torch.full(x.shape[1:], float(shift), dtype=x.dtype, device=x.device)
        if isinstance(layer, torch.nn.Linear):
            change = layer.weight @ constant.flatten()
        else:
            change = layer.weight.flatten(1).sum(1) * float(shift)  # every window sees the same constant
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(-change)
        else:
            layer.bias -= change
    explain = explainer(explain)
    with torch.no_grad():
        target = model(x).argmax(1) if target is None else torch.as_tensor(target).long().expand(len(x))
    a = relevance(explain, model, x, target).double()
    b = relevance(explain, shifted, x + shift, target).double()
    difference = (a - b).flatten(1).abs().amax(1) / a.flatten(1).abs().amax(1).clamp(min=1e-12)
    return Result("input_invariance", (difference <= tolerance).double(), True, {"shift": shift,
                                                                                 "tolerance": tolerance},
                  details={"relative_difference": difference})


def non_sensitivity(model, x, relevance_, target=None, *, eps=1e-5, baseline="black", batch_size=64,
                    channel_dim="auto", output=None) -> Result:
    """Non-sensitivity (Nguyen & Martinez 2020): locations where zero relevance and no output effect disagree.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        relevance_: The relevance of x: a relprop Explanation or a tensor shaped like x.
        target: The class scored: an int, one int per sample, or "predicted"; None takes the class the explanation
            explained (a plain tensor of relevance then needs target).
        eps: Output changes and relevance of at most this magnitude count as zero.
        baseline: What removed locations become: a number, a tensor shaped like one sample or like x, or one of
            "black" (each sample's minimum), "white" (its maximum), "mean", "uniform" (seeded noise between them) or
            "blur" (a Gaussian blur of the sample).
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        output: Picks the class scores from what the model returns, e.g. ``lambda out: out.logits``.

    Returns:
        A Result: per sample, the number of locations where the two disagree (lower is better).
    """
    runner = Runner.of(model, x, target, batch_size=batch_size, output=output, relevance=relevance_)
    axis = channel_axis(runner.x, channel_dim)
    locations = location_shape(runner.x, axis)
    size = int(torch.tensor(locations).prod()) if locations else 1
    fill = baseline_values(runner.x, baseline, axis)
    eye = torch.eye(size, dtype=torch.bool, device=runner.x.device)

    def perturb(rows, k):
        return masked_copies(runner.x, fill, axis, rows, eye[k.to(eye.device)].view((-1,) + locations))

    effect = (runner.clean.view(-1, 1) - runner.scores(size, perturb)).abs() > eps
    relevant = pooled(relevance_of(relevance_, runner.x), axis, "sum").flatten(1).abs() > eps
    return Result("non_sensitivity", (effect != relevant).sum(1).double(), False, {"eps": eps,
                                                                                  "baseline": baseline})
