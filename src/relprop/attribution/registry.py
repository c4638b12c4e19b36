"""Every attribution method by name: what builds it, the defaults its name gives, the parameters a caller may set
by name, and what the memory estimate reads from it.

The command line (``--method NAME --param NAME=VALUE``), :func:`relprop.datasets.run` (``method=NAME``) and the
evaluation (methods by name in :func:`relprop.evaluate.benchmark`) all build methods here, so one name means one
method with one set of defaults everywhere. ``lrp`` is :class:`relprop.LRP`; its parameters are its composite's.

A method's memory needs are declared on its class, where :func:`relprop.memory.needed_bytes` reads them from the
built method: ``keeps_graph`` (a pass keeps autograd's graph), ``copies_in_passes`` (its copies of each input run in
passes of at most ``rows_per_pass`` rows), ``saved_per_activation`` (what its backward keeps per activation, relative
to a plain gradient) and ``copies_per_input(sample_shape)`` (how many model inputs one input becomes).

Example:
    >>> from relprop.attribution import registry
    >>> dict(registry.get("occlusion").defaults)
    {'window': (8, 8)}
    >>> list(registry.get("integrated_gradients").parameters())
    ['baseline', 'steps', 'method']
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .lrp import LRP
from .deeplift import DeepLift
from .gradient import (Deconvnet, ExcitationBackprop, Gradient, GradientXInput, GuidedBackprop, IntegratedGradients,
                       SmoothGrad)
from .occlusion import Occlusion

# Constructor parameters a caller does not set by name: the model and the output picker are given apart, and
# callables, maps and composites cannot be written as a NAME=VALUE text (the Python API takes them directly).
NOT_BY_NAME = ("self", "model", "output", "batch_size", "composite", "canonizers", "custom_attribution_func",
               "layer_map", "name_map", "index_map", "forward", "feature_names", "class_names")


def settable(factory: Callable) -> dict[str, inspect.Parameter]:
    """The parameters of a class or function that a caller sets by name (``--param NAME=VALUE``).

    Args:
        factory: A method class, a composite class or any callable.

    Returns:
        Parameter name -> its inspect.Parameter, in signature order.
    """
    return {name: parameter for name, parameter in inspect.signature(factory).parameters.items()
            if name not in NOT_BY_NAME and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}


@dataclass(frozen=True)
class Method:
    """An attribution method as its name builds it.

    Attributes:
        name: The name (``--method NAME``).
        constructor: The class, called as ``constructor(model, **values)``.
        defaults: Values the name gives where the class has no default (occlusion's window).
    """

    name: str
    constructor: Callable
    defaults: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The parameters set by name (for ``lrp`` none: they are its composite's, see :func:`relprop.composites.get`).

        Returns:
            Parameter name -> its inspect.Parameter.
        """
        return {} if self.name == "lrp" else settable(self.constructor)

    def build(self, model, **values):
        """The method for ``model``: its defaults, overridden by ``values``.

        Args:
            model: The model to explain.
            **values: Parameters by name, and ``output`` (a picker of the tensor to explain) where needed.

        Returns:
            The attributor, called as ``attributor(x, target) -> Explanation``.

        Raises:
            TypeError: for a parameter the method does not take.
            ValueError: for a value the method refuses (its message names the fix).
        """
        return self.constructor(model, **{**self.defaults, **values})

    def memory(self) -> dict:
        """What :func:`relprop.memory.needed_bytes` reads from the class (an instance may refine it).

        Returns:
            ``{"keeps_graph": bool, "copies_in_passes": bool, "saved_per_activation": float}``.
        """
        return {name: getattr(self.constructor, name)
                for name in ("keeps_graph", "copies_in_passes", "saved_per_activation")}


METHODS = {method.name: method for method in (
    Method("lrp", LRP),
    Method("gradient", Gradient),
    Method("gradient_x_input", GradientXInput),
    Method("smoothgrad", SmoothGrad),
    Method("integrated_gradients", IntegratedGradients),
    # 8x8 windows, each in its own place (stride = window): what `relprop explain` and `relprop run` have always
    # used, so stores written before resume with the same numbers
    Method("occlusion", Occlusion, {"window": (8, 8)}),
    Method("guided_backprop", GuidedBackprop),
    Method("deconvnet", Deconvnet),
    Method("excitation_backprop", ExcitationBackprop),
    Method("deeplift", DeepLift),
)}


def names(lrp: bool = True) -> list[str]:
    """The methods' names, ``lrp`` first.

    Args:
        lrp: Include ``lrp`` (False: the methods besides LRP).

    Returns:
        A list of names.
    """
    return [name for name in METHODS if lrp or name != "lrp"]


def get(name: str) -> Method:
    """The method of a name.

    Args:
        name: One of :func:`names`.

    Returns:
        Its Method.

    Raises:
        KeyError: for an unknown name (the message lists the names).
    """
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {', '.join(names())}")
    return METHODS[name]


def build(name: str, model, **values):
    """The method of a name for ``model``, with its defaults (see :meth:`Method.build`).

    Args:
        name: One of :func:`names`.
        model: The model to explain.
        **values: Parameters by name (for ``lrp``: ``composite`` and the composite's parameters).

    Returns:
        The attributor.
    """
    return get(name).build(model, **values)


__all__ = ["Method", "METHODS", "names", "get", "build", "settable", "NOT_BY_NAME"]
