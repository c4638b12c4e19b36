"""Modified weights (w+, w-, w + gamma w+, of a layer or of a layer merged with its batch norm) kept between calls.

Building them costs a few passes over every weight on each call; at small batches that is a sizeable share of an
explanation (ResNet-50 has 25M weights). An LRP object keeps them in a WeightCache, keyed on the tensors they are
built from. An entry is used only while each of those tensors is the same object with the same version counter and
data pointer, so in-place updates (optimizer steps, ``load_state_dict``, writes under ``torch.no_grad()``) and
replaced parameters rebuild it. Writes through ``param.data`` bypass version counters (autograd does not see them
either), so each source's checksum is compared too (one read of it per explanation, the wrap-around sum of its
bytes as 64-bit words): that catches any one changed value, and misses only changes that cancel in that sum
(some permutations of a weight's values). Entries hold only weak references to their sources: they are
dropped when the parameters are, and all go with the LRP object. A kept weight may carry forms derived from it
(``derived``: a 1x1 convolution's weight transposed, for its backward), which go when it does. What is kept is
one to three copies of the convolution weights and a transposed copy of the 1x1 ones (ResNet-50: 89 + 46 MiB for
epsilon_plus_flat, 149 + 76 MiB for epsilon_gamma_box, 268 + 93 MiB for epsilon_alpha2_beta1).
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
        self._held: dict = {}  # id of a kept weight -> its entry's identity (for derived forms of it)

    def begin(self):
        """A new explanation: sources are checksummed again (once each) before their weights are used."""
        self._sums = {}

    def __len__(self):
        return len(self._entries)

    def clear(self):
        """Drop every kept weight."""
        self._entries.clear()
        self._held.clear()

    def derived(self, weight: torch.Tensor, key, build: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
        """build(weight), kept beside weight while it is kept; None when weight is not one this cache keeps (then the
        caller uses weight as it is)."""
        identity = self._held.get(id(weight))
        entry = self._entries.get(identity) if identity is not None else None
        if entry is None or entry[3] is not weight:  # not kept (or an id reused after its weight was dropped)
            return None
        forms = entry[4]
        if key not in forms:
            with torch.no_grad():
                forms[key] = build(weight)
        return forms[key]

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
            references, kept_stamp, sums, value, _ = entry
            if (kept_stamp == stamp and all(reference() is source for reference, source in zip(references, sources))
                    and self._checksums(sources) == sums):
                return value
        with torch.no_grad():
            value = build()
        this = weakref.ref(self)

        def forget(_, identity=identity):
            cache = this()
            if cache is not None:
                dropped = cache._entries.pop(identity, None)
                if dropped is not None:
                    cache._held.pop(id(dropped[3]), None)

        references = tuple(weakref.ref(source, forget) for source in sources)
        if entry is not None:
            self._held.pop(id(entry[3]), None)
        self._entries[identity] = (references, stamp, self._checksums(sources), value, {})
        self._held[id(value)] = identity
        return value

    def _checksums(self, sources) -> tuple:
        """A checksum per source (one read, once per explanation): catches writes through ``.data``, which leave
        version counters as they were. The first source unsummed in an explanation sums every source the cache
        knows, with one synchronisation for all."""
        if any(id(source) not in self._sums for source in sources):
            unsummed = {id(source): source for source in sources if id(source) not in self._sums}
            for references, *_ in self._entries.values():
                for reference in references:
                    source = reference()
                    if source is not None and id(source) not in self._sums:
                        unsummed.setdefault(id(source), source)
            self._sums.update(checksums(list(unsummed.values())))
        return tuple(self._sums[id(source)] for source in sources)


def checksums(tensors: list) -> dict:
    """id -> checksum of each tensor's bytes: the wrap-around sum of its 64-bit words, which changes whenever one value
    does (a float sum can round a small change away) and costs what a float sum does (both read every byte:
    ResNet-50's 25M weights, 8.2-8.5 ms on one thread); a float sum where the bytes do not split into aligned
    words."""
    sums, words = {}, {}
    with torch.no_grad():
        for tensor in tensors:
            bits = _words(tensor.detach())
            if bits is None:
                sums[id(tensor)] = float(tensor.detach().sum()) if tensor.is_floating_point() else 0.0
            else:
                words.setdefault(bits.device, []).append((id(tensor), bits.sum()))
        for pairs in words.values():
            values = torch.stack([total for _, total in pairs]).tolist()  # one synchronisation per device
            sums.update((key, value) for (key, _), value in zip(pairs, values))
    return sums


def _words(tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor's bytes as 64-bit integers, or None when they are not contiguous and 8-byte aligned."""
    if not tensor.is_contiguous() or tensor.dtype in (torch.bool, torch.complex64, torch.complex128):
        return None
    size = tensor.element_size()
    if (tensor.numel() * size) % 8 or (tensor.storage_offset() * size) % 8 or tensor.numel() == 0:
        return None
    return tensor.reshape(-1).view(torch.uint8).view(torch.int64)
