"""Canonizers: make a model LRP-friendly while explaining, without touching the model.

relprop sees ops, not modules, so most of what other libraries need canonizers for is built in: residual sums
(``x + f(x)``, ``out += identity``) split relevance in proportion to their terms, and average pooling under the
flat or w^2 rule is a per-channel linear map, so relevance never leaks across channels. What stays a choice is
batch-norm merging, which follows the data: a batch norm whose input was produced by a linear or convolution op is
explained as one layer with the merged weights (running statistics in eval mode, batch statistics in train mode),
so rules such as gamma or z+ see the weights that really act. The model's parameters and buffers are never
written; running statistics move in train mode exactly as one plain forward moves them.

A canonizer is a set of handler overrides: ``handlers()`` maps op families to handlers that take the place of the
family's own (``ops/table.py``) while explaining; merging is ``ops.norms.merged_batch_norm``.
"""
from __future__ import annotations


class Canonizer:
    """A canonizer overrides the LRP handlers of some op families (``ops.table``) while it is in use."""

    name = "canonizer"

    def handlers(self) -> dict:
        """family -> handler(ctx, func, name, args, kwargs), taking the family's place in the run."""
        return {}

    def __repr__(self):
        return f"{type(self).__name__}()"


class MergeBatchNorm(Canonizer):
    """Explain linear/conv followed by batch norm (1d/2d/3d) as one layer with merged weights."""

    name = "merge_batch_norm"

    def handlers(self):
        from .ops.norms import merged_batch_norm  # the ops import the engine, which imports this module

        return {"batch_norm": merged_batch_norm}


_REGISTRY = {"merge_batch_norm": MergeBatchNorm}


def names() -> list[str]:
    """The canonizer names resolve() accepts (besides "auto").

    Returns:
        The sorted names.
    """
    return sorted(_REGISTRY)


def resolve(spec) -> tuple[Canonizer, ...]:
    """The canonizer objects a ``canonizers=`` argument names.

    Args:
        spec: "auto" (batch norm merged into the layer before it), None or False (none), a name, a Canonizer, or a
            list of names and Canonizers.

    Returns:
        A tuple of Canonizer.

    Raises:
        TypeError: for a spec of another type.
        ValueError: for an unknown name.
    """
    if spec is None or spec is False:
        return ()
    if isinstance(spec, str):
        if spec == "auto":
            return (MergeBatchNorm(),)
        spec = [spec]
    if isinstance(spec, Canonizer):
        spec = [spec]
    try:
        items = list(spec)
    except TypeError:
        raise TypeError(f"canonizers must be 'auto', None, a name or a list, got {spec!r}") from None
    result = []
    for item in items:
        if isinstance(item, Canonizer):
            result.append(item)
        elif isinstance(item, str) and item in _REGISTRY:
            result.append(_REGISTRY[item]())
        else:
            raise ValueError(f"unknown canonizer {item!r}; choose 'auto', None, or from {', '.join(names())}")
    return tuple(result)
