"""Occlusion (Zeiler & Fergus 2014): how much the target output drops when a window of the input is covered.

A window slides over each sample in steps of ``stride``; where the last step would run past the edge the window is
cut there, so every value is covered. Each input value gets the average drop over the windows covering it, as in
captum's ``Occlusion`` (whose ``sliding_window_shapes`` and ``strides`` are ``window`` and ``stride`` here; its
default stride is 1, ours the window itself). Occluded copies run batched, many windows per forward pass; on a CPU,
when the batch fits one pass and a window is small, each window's copy of the batch instead runs as an incremental
pass from the unoccluded batch (``engine.incremental``: only what the window reaches is recomputed).
"""
from __future__ import annotations

import itertools
import math

import torch

from ..engine.incremental import Incremental
from ..explanation import Explanation
from .. import diagnose
from .base import Attribution, baseline_like, batched, explained, undefined


def _sizes(value, name: str) -> tuple[int, ...]:
    sizes = (value,) if isinstance(value, int) else value
    if (not isinstance(sizes, (tuple, list)) or not sizes
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)):
        raise ValueError(f"{name} must be a positive int or a tuple of positive ints, got {value!r}")
    return tuple(sizes)


class Occlusion(Attribution):
    """Average drop of the target output when windows covering each input value are replaced by the baseline.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        window: The window's size over a sample's last dimensions, e.g. (8, 8) for images (all channels at once) or
            (1, 8, 8) (one channel at a time); a shorter tuple than the sample's shape covers its leading dimensions
            whole.
        stride: Steps between windows, an int or one per window dimension (default: the window, so windows tile).
        baseline: What covers the window: a number, one sample (shared) or one per sample; can be overridden per
            call.
        batch_size: The most model inputs in one forward pass (None: about two million input values per pass).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
        incremental: Run each window's copies as an incremental pass (None: on a CPU, for windows of at most a
            quarter of a sample's positions, when the batch fits one pass and the model is called as model(x)).

    Raises:
        ValueError: for a window or stride that is not positive ints, or a stride larger than the window.
    """

    keeps_graph = False  # forward passes only
    copies_in_passes = True

    def __init__(self, model, window, stride=None, baseline=0.0, batch_size: int | None = None, output=None,
                 forward=None, feature_names=None, incremental: bool | None = None):
        super().__init__(model, batch_size, output, forward, feature_names)
        self.incremental = incremental
        self.window = _sizes(window, "window")
        self.stride = self.window if stride is None else _sizes(stride, "stride")
        if len(self.stride) == 1 and len(self.window) > 1:
            self.stride = self.stride * len(self.window)
        if len(self.stride) != len(self.window):
            raise ValueError(f"stride {stride!r} has {len(self.stride)} entries but window {window!r} has "
                             f"{len(self.window)}; give one stride per window dimension or a single int")
        for size, step in zip(self.window, self.stride):
            if step > size:
                raise ValueError(f"stride {self.stride} is larger than window {self.window}: values between windows "
                                 "would never be occluded; use a stride of at most the window size")
        self.baseline = baseline

    def geometry(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Window and stride over every dimension of a sample shaped ``shape``.

        Args:
            shape: The sample's shape.

        Returns:
            A pair (window, stride), one entry per dimension.

        Raises:
            ValueError: for a window longer than the sample's dimensions.
        """
        if len(self.window) > len(shape):
            raise ValueError(f"window {self.window} has {len(self.window)} dimensions but a sample has only "
                             f"{len(shape)} (shape {shape}); give at most one size per sample dimension")
        lead = shape[:len(shape) - len(self.window)]
        window, stride = tuple(lead) + self.window, tuple(lead) + self.stride
        for dim, (size, extent) in enumerate(zip(window, shape)):
            if size > extent:
                raise ValueError(f"window {self.window} is larger than a sample {shape} in dimension {dim + 1} "
                                 f"({size} > {extent}); use a window of at most {extent} there")
        return window, stride

    def copies_per_input(self, sample_shape):
        """One occluded copy per window position.

        Args:
            sample_shape: One sample's shape (without the batch dimension).

        Returns:
            The number of window positions.
        """
        window, stride = self.geometry(tuple(sample_shape))
        return math.prod(math.ceil((extent - size) / step) + 1
                         for extent, size, step in zip(sample_shape, window, stride))

    def __call__(self, x: torch.Tensor, target=None, *, baseline=None) -> Explanation:
        """Explain x by occluding it window by window.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.
            baseline: Overrides the explainer's baseline for this call.

        Returns:
            An Explanation (delta undefined: NaN).
        """
        target = self.check(x, target)
        if x.dim() < 2:
            raise ValueError(f"x has shape {tuple(x.shape)}: occlusion needs samples with at least one dimension")
        x = x.detach()
        fill = baseline_like(x, self.baseline if baseline is None else baseline)
        shape = tuple(x.shape[1:])
        window, stride = self.geometry(shape)
        counts = [math.ceil((extent - size) / step) + 1 for extent, size, step in zip(shape, window, stride)]
        output, g, index = self.resolve(x, target)
        clean = explained(output, g)

        def occluded():
            for position in itertools.product(*(range(count) for count in counts)):
                region = (slice(None),) + tuple(slice(p * step, p * step + size)
                                                for p, step, size in zip(position, stride, window))
                rows = x.clone()
                rows[region] = fill[region]
                yield (rows,)

        drops = torch.empty(math.prod(counts), len(x), dtype=x.dtype, device=x.device)
        incremental = self.incremental_passes(x, window)
        if incremental is not None:
            incremental(x)  # the base pass: the unoccluded batch
            for number, rows in enumerate(occluded()):
                output = self.select(incremental(rows[0], keep=False))
                diagnose.check_output_batch(output, len(x))
                drops[number] = clean - explained(output, g)
        for (rows,), sample, number in batched(occluded() if incremental is None else (), self.rows_per_pass(x)):
            with torch.no_grad():
                drops[number, sample] = clean[sample] - explained(self.run(rows), g[sample])
        # A window's mask is the product of one interval per dimension, so summing drop x mask over all windows is
        # one small contraction per dimension with the interval matrices (window start x position).
        covers = []
        for extent, size, step, count in zip(shape, window, stride, counts):
            positions = torch.arange(extent, device=x.device)
            starts = torch.arange(count, device=x.device).unsqueeze(1) * step
            covers.append(((positions >= starts) & (positions < starts + size)).to(x.dtype))
        dims = len(shape)
        operands = [drops.T.reshape(len(x), *counts), [0, *range(1, dims + 1)]]
        for dim, cover in enumerate(covers):
            operands += [cover, [dim + 1, dims + dim + 1]]
        total = torch.einsum(*operands, [0, *range(dims + 1, 2 * dims + 1)])
        coverage = covers[0].sum(0)
        for cover in covers[1:]:
            coverage = coverage.unsqueeze(-1) * cover.sum(0)
        relevance = total / coverage
        return Explanation(relevance, output, clean, undefined(x), index, feature_names=self.feature_names)

    def incremental_passes(self, x: torch.Tensor, window) -> Incremental | None:
        """The incremental engine for occluding x, or None where plain batched passes are the better choice.

        Args:
            x: The input batch.
            window: The window over every dimension.

        Returns:
            An Incremental engine, or None.
        """
        usable = self.forward is None and x.dim() >= 3 and x.is_floating_point() and len(x) <= self.rows_per_pass(x)
        if self.incremental is None:
            small = math.prod(window[1:]) * 4 <= math.prod(x.shape[2:])
            return Incremental(self.model) if usable and small and x.device.type == "cpu" else None
        return Incremental(self.model) if self.incremental and usable else None
