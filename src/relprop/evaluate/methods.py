"""Explainers by name, so metrics that re-explain (randomisation, robustness) and the benchmark take a string.

An explainer is ``callable(model, x, target) -> Explanation or relevance tensor``. Names: the LRP composites
(``relprop composites``), and ``gradient``, ``gradient_x_input``, ``smoothgrad``, ``integrated_gradients``,
``deeplift``, ``occlusion``, ``guided_backprop``, ``deconvnet``, ``excitation_backprop``.
"""
from __future__ import annotations

# Defaults that differ from the methods' own: occlusion windows of 4x4 (the demo's 32x32 images), SmoothGrad seeded.


def names() -> list[str]:
    from .. import attribution, composites

    return list(composites.names()) + list(attribution.BY_NAME)


def explainer(method, **options):
    """The explainer for a name (options go to the method or composite), or method itself if it is callable."""
    if callable(method):
        return method
    from .. import attribution, composites
    from ..attribution.lrp import LRP

    if method in composites.names():
        composite = composites.get(method, **options)
        return lambda model, x, target: LRP(model, composite)(x, target)
    if method in attribution.BY_NAME:
        cls = attribution.BY_NAME[method]
        if method == "occlusion":
            options.setdefault("window", (4, 4))
        if method == "smoothgrad":
            options.setdefault("seed", 0)  # an evaluation must be reproducible
        return lambda model, x, target: cls(model, **options)(x, target)
    raise ValueError(f"unknown method {method!r}; choose a composite or attribution method: {', '.join(names())}, "
                     "or pass callable(model, x, target)")


def relevance(explain, model, x, target):
    """The relevance tensor an explainer returns, detached."""
    result = explain(model, x, target)
    return getattr(result, "relevance", result).detach()
