"""Explainers by name, so metrics that re-explain (randomisation, robustness) and the benchmark take a string.

An explainer is ``callable(model, x, target) -> Explanation or relevance tensor``. Names: the LRP composites
(``relprop composites``), and the methods of :mod:`relprop.attribution.registry` besides ``lrp``: ``gradient``,
``gradient_x_input``, ``smoothgrad``, ``integrated_gradients``, ``deeplift``, ``occlusion``, ``guided_backprop``,
``deconvnet``, ``excitation_backprop``. A name gets the registry's defaults (occlusion: 8x8 windows); options
override them.
"""
from __future__ import annotations

# What an evaluation adds to a method's defaults: SmoothGrad seeded, so an evaluation is reproducible.
EVALUATION_DEFAULTS = {"smoothgrad": {"seed": 0}}


def names() -> list[str]:
    from .. import composites
    from ..attribution import registry

    return list(composites.names()) + registry.names(lrp=False)


def explainer(method, **options):
    """The explainer for a name (options go to the method or composite), or method itself if it is callable."""
    if callable(method):
        return method
    from .. import composites
    from ..attribution import registry

    if method in composites.names():
        composite = composites.get(method, **options)
        return lambda model, x, target: registry.build("lrp", model, composite=composite)(x, target)
    if method in registry.names(lrp=False):
        options = {**EVALUATION_DEFAULTS.get(method, {}), **options}
        return lambda model, x, target: registry.build(method, model, **options)(x, target)
    raise ValueError(f"unknown method {method!r}; choose a composite or attribution method: {', '.join(names())}, "
                     "or pass callable(model, x, target)")


def relevance(explain, model, x, target):
    """The relevance tensor an explainer returns, detached."""
    result = explain(model, x, target)
    return getattr(result, "relevance", result).detach()
