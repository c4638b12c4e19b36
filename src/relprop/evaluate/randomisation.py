"""Randomisation: do explanations depend on what the model learned and on the class asked for?

- Model parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"): the layers with
  parameters are randomised one at a time from the output towards the input, either cumulatively ("cascading")
  or each alone ("independent"), and the explanation of the randomised model is compared with the original by a
  similarity (Spearman rank correlation, SSIM or top-k intersection) of the channel-pooled maps. A map that
  reflects the model changes, so low similarity is better. Every randomised model is a copy: the model itself is
  never changed.
- Random logit (Sixt et al. 2020, "When explanations lie"): the similarity between the explanation of the target
  and that of a random other class (seeded); low is better.
"""
from __future__ import annotations

import copy

import torch

from .inputs import channel_axis, check_input, pooled
from .methods import explainer, relevance
from .result import Result
from .similarity import SIMILARITIES


def parameter_layers(model: torch.nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in registration order.

    Args:
        model: The model.

    Returns:
        A list of module names.
    """
    return [name for name, module in model.named_modules()
            if any(True for _ in module.parameters(recurse=False))]


def blocks(model: torch.nn.Module) -> list[str]:
    """Names of the model's top-level children that hold parameters: MPRT's cheap setting, a cascade by block.

    Args:
        model: The model.

    Returns:
        A list of child names.
    """
    return [name for name, child in model.named_children() if any(True for _ in child.parameters())]


def _randomise(module: torch.nn.Module, generator: torch.Generator, recurse: bool = False):
    """New values for a module's own parameters (recurse: and those of its children): weights uniform with variance
    1 / fan-in (LeCun), one-dimensional parameters (biases, norm scales) Gaussian with the old values' spread."""
    with torch.no_grad():
        for name, parameter in module.named_parameters(recurse=recurse):
            if parameter.dim() > 1:
                fan_in = parameter[0].numel()
                bound = 1 / fan_in ** 0.5
                parameter.copy_((torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype) * 2 - 1)
                                .to(parameter.device) * bound * 3 ** 0.5)
            else:
                spread = parameter.detach().std() if parameter.numel() > 1 else parameter.detach().abs()
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                                .to(parameter.device) * float(spread if spread > 0 else 0.1))


def _maps(explain, model, x, target, axis, batch_size):
    parts = [relevance(explain, model, chunk, t) for chunk, t in zip(x.split(batch_size), target.split(batch_size))]
    return pooled(torch.cat(parts), axis, "sum")


def _similar(name, a, b, k):
    if name not in SIMILARITIES:
        raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")
    return SIMILARITIES[name](a, b, k) if name == "top_k" else SIMILARITIES[name](a, b)


def model_parameter_randomisation(model, x, target=None, explain="epsilon_plus_flat", *, mode="cascading",
                                  similarity="spearman", layers=None, seed=0, k=100, absolute=True, batch_size=64,
                                  channel_dim="auto", original=None) -> Result:
    """MPRT (Adebayo et al. 2018): mean similarity over layers of original and randomised-model explanations.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        target: The class explained: an int or one int per sample; None: the class the model predicts.
        explain: The explanation method to rerun on the changed model or input: a callable ``explain(model, x,
            target)`` returning relevance, or a method by name as relprop.evaluate.benchmark takes it.
        mode: "cascading" (each layer randomised on top of the ones after it) or "independent" (one layer at a
            time).
        similarity: How two explanations are compared: "spearman" (rank correlation), "ssim" or "top_k" (the overlap
            of their k most relevant locations).
        layers: None (every module with parameters: one explanation per layer, the costly part), "blocks" (the
            model's top-level children, each randomised whole: a coarser cascade, which also ends with every layer
            random), or a list of module names.
        seed: Seeds every random draw of the metric, so its score repeats.
        k: The number of most relevant locations the "top_k" similarity compares.
        absolute: Compare magnitudes |R| instead of signed relevance.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.
        original: The relevance explain gives on the model itself, when already computed (it is then not explained
            again); None explains it.

    Returns:
        A Result: the mean similarity per sample (lower is better); each layer's under details.

    Raises:
        ValueError: for an unknown mode, similarity or layer name.
    """
    x = check_input(x)
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    explain = explainer(explain)
    axis = channel_axis(x, channel_dim)
    with torch.no_grad():
        output = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    target = output.argmax(1) if target is None else torch.as_tensor(target).long().expand(len(x))
    by_block = isinstance(layers, str) and layers == "blocks"
    if isinstance(layers, str) and not by_block:
        raise ValueError(f"layers must be None (every layer with parameters), \"blocks\" or a list of names, got "
                         f"{layers!r}")
    names = parameter_layers(model) if layers is None else blocks(model) if by_block else list(layers)
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ValueError(f"no module named {missing[0]!r}; layers with parameters: {parameter_layers(model)}")
    transform = (lambda m: m.abs()) if absolute else (lambda m: m)  # noqa: E731
    if original is None:
        original = _maps(explain, model, x, target, axis, batch_size)
    else:
        if original.shape != x.shape:
            raise ValueError(f"original relevance is shaped {tuple(original.shape)}, not like x {tuple(x.shape)}; "
                             "give the relevance of x for these targets, or leave original out")
        original = pooled(original.detach(), axis, "sum")
    original = transform(original)
    generator = torch.Generator().manual_seed(seed)
    randomised = copy.deepcopy(model)
    per_layer = []
    for name in reversed(names):  # from the output towards the input
        if mode == "independent":
            randomised = copy.deepcopy(model)
        _randomise(dict(randomised.named_modules())[name], generator, recurse=by_block)
        changed = transform(_maps(explain, randomised, x, target, axis, batch_size))
        per_layer.append(_similar(similarity, original, changed, k))
    per_layer = torch.stack(per_layer, 1)
    return Result(f"model_parameter_randomisation_{mode}", per_layer.mean(1), False,
                  {"mode": mode, "similarity": similarity, "layers": list(reversed(names)), "seed": seed},
                  details={"per_layer": per_layer})


def random_logit(model, x, target=None, explain="epsilon_plus_flat", *, similarity="ssim", seed=0, k=100,
                 batch_size=64, channel_dim="auto") -> Result:
    """Random logit (Sixt et al. 2020): similarity of the target's explanation and a random other class's.

    Args:
        model: The classifier (a torch.nn.Module), or a relprop.evaluate.Runner built for x, to share its forward
            passes between metrics.
        x: The input batch, samples first (N, ...).
        target: The class explained: an int or one int per sample; None: the class the model predicts.
        explain: The explanation method to rerun on the changed model or input: a callable ``explain(model, x,
            target)`` returning relevance, or a method by name as relprop.evaluate.benchmark takes it.
        similarity: How two explanations are compared: "spearman" (rank correlation), "ssim" or "top_k" (the overlap
            of their k most relevant locations).
        seed: Seeds every random draw of the metric, so its score repeats.
        k: The number of most relevant locations the "top_k" similarity compares.
        batch_size: The most perturbed copies one forward pass holds (bounds memory whatever the number of steps).
        channel_dim: The dimension of x holding channels, pooled into one location: "auto" (1 for images, 2 for (N,
            T, C) sequences, none for (N, F)), an int, or None for no channel dimension.

    Returns:
        A Result: the similarity per sample (lower is better).

    Raises:
        ValueError: for a model with fewer than two classes or an unknown similarity.
    """
    x = check_input(x)
    explain = explainer(explain)
    axis = channel_axis(x, channel_dim)
    with torch.no_grad():
        output = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    classes = output.shape[1]
    if classes < 2:
        raise ValueError("random_logit needs a model with at least two classes")
    target = output.argmax(1) if target is None else torch.as_tensor(target).long().expand(len(x)).to(output.device)
    generator = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, classes, (len(x),), generator=generator).to(target.device)
    other = (target + offset) % classes
    a = _maps(explain, model, x, target, axis, batch_size)
    b = _maps(explain, model, x, other, axis, batch_size)
    return Result("random_logit", _similar(similarity, a, b, k), False, {"similarity": similarity, "seed": seed},
                  details={"other_class": other.double()})
