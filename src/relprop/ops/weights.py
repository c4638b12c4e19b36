"""Modified weights (w+, w-, w + gamma w+, of a layer or of a layer merged with its batch norm) kept between calls.

Building them costs a few passes over every weight on each call; at small batches that is a sizeable share of an
explanation (ResNet-50 has 25M weights). An LRP object keeps them in a WeightCache, keyed on the tensors they are
built from. An entry is used only while each of those tensors is the same object with the same version counter and
data pointer, so in-place updates (optimizer steps, ``load_state_dict``, writes under ``torch.no_grad()``) and
replaced parameters rebuild it. Writes through ``param.data`` bypass version counters (autograd does not see them
either), so each source's sum is compared too (one read of it per explanation): that catches them unless they leave
the sum as it was (a permutation of a weight's values). Entries hold only weak references to their sources: they are
dropped when the parameters are, and all go with the LRP object. What is kept is about one to two copies of the
convolution weights (ResNet-50: 89 MiB for epsilon_plus_flat, 179 MiB for epsilon_alpha2_beta1).
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch

from .. import rules

# Weight modifiers whose result depends on the weight alone (a lambda made per call, e.g. Exponent's, is not kept).
_KNOWN = (rules.positive, rules.negative, rules.ones, rules.square)


def modifier_key(modifier) -> tuple | None:
    """What identifies a weight modifier's result for a given weight, or None when it cannot be kept."""
    if modifier is rules.keep:
        return None
    parts = getattr(modifier, "parts", None)
    if parts is not None:  # a W+ + c W-, e.g. gamma's w + gamma w+ (a closure made anew for each call)
        return ("parts", getattr(modifier, "__qualname__", ""), parts)
    return (modifier,) if modifier in _KNOWN else None


class WeightCache:
    """Weights built from parameters, kept while the parameters are unchanged (see the module docstring)."""

    def __init__(self):
        self._entries: dict = {}
        self._sums: dict = {}  # id -> checksum, for the sources seen in this explanation

    def begin(self):
        """A new explanation: sources are checksummed again (once each) before their weights are used."""
        self._sums = {}

    def __len__(self):
        return len(self._entries)

    def clear(self):
        """Drop every kept weight."""
        self._entries.clear()

    def get(self, sources: tuple, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The weight that build() makes from sources, built again only when a source changed.

        Args:
            sources: The tensors the weight is built from (parameters and buffers).
            key: What else identifies it (the modifier, a batch norm's eps).
            build: Makes the weight.

        Returns:
            The weight (the caller must not write to it).
        """
        identity = (tuple(id(source) for source in sources), key)
        stamp = tuple((source._version, source.data_ptr()) for source in sources)
        entry = self._entries.get(identity)
        if entry is not None:
            references, kept_stamp, sums, value = entry
            if (kept_stamp == stamp and all(reference() is source for reference, source in zip(references, sources))
                    and self._checksums(sources) == sums):
                return value
        with torch.no_grad():
            value = build()
        this = weakref.ref(self)

        def forget(_, identity=identity):
            cache = this()
            if cache is not None:
                cache._entries.pop(identity, None)

        references = tuple(weakref.ref(source, forget) for source in sources)
        self._entries[identity] = (references, stamp, self._checksums(sources), value)
        return value

    def _checksums(self, sources) -> tuple:
        """A sum per source (one read, once per explanation): catches writes through ``.data``, which leave version
        counters as they were."""
        sums = []
        for source in sources:
            total = self._sums.get(id(source))
            if total is None:
                with torch.no_grad():
                    total = self._sums[id(source)] = float(source.sum()) if source.is_floating_point() else 0.0
            sums.append(total)
        return tuple(sums)
