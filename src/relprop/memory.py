"""How much memory explaining a batch will take, estimated before running, and how much there is.

The model runs once on meta tensors (shapes only: nothing is allocated, nothing is computed) for one sample at the
real input size, and every new tensor an op returns is counted; views and in-place results share memory and are
left out. A backward pass keeps about that much per input row (what autograd saves for the gradient), so a pass of
``rows`` rows needs about

    rows * activations * factor + 2 * largest activation * rows     (the gradient buffers in flight)

with factor 1 for gradient methods and 1.5 for LRP (which also keeps modified pre-activations, measured 1.4x in
the benchmarks); a pass without gradients (occlusion) holds only a few activations at a time. Methods that explain
many copies of each input (SmoothGrad, integrated gradients, occlusion) run them in passes of a bounded number of
rows, so their need grows with the sample size, not with the number of copies. Each image also costs about ten
input-sized float arrays (pixels, input, relevance, gradient, heatmap and overlay).

:class:`Budget` applies the estimate to a device: how many samples of a shape fit at once in the memory left there
(`relprop explain` splits its batches by it, and refuses a batch that will not fit before reading any image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

from .engine.intercept import OpMode

IMAGE_COPIES = 10  # input-sized float arrays held per image besides the model's activations


@dataclass(frozen=True)
class Footprint:
    """What one sample's forward pass creates: all new tensors together, and the largest one (bytes).

    Attributes:
        total: Bytes of all new tensors together.
        largest: Bytes of the largest one.
    """

    total: int
    largest: int


class _Tally(OpMode):
    """Counts the bytes of the new tensors each op returns (quiet ops too: ``new_zeros`` and the like allocate)."""

    sees_quiet = True

    def __init__(self):
        super().__init__()
        self.total = self.largest = 0

    def op(self, func, name, family, args, kwargs):
        result = func(*args, **kwargs)
        given = {id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor) and id(tensor) not in given and tensor._base is None:
                size = tensor.numel() * tensor.element_size()
                self.total += size
                self.largest = max(self.largest, size)
        return result


def footprint(model: torch.nn.Module, sample_shape: tuple, dtype=torch.float32, output=None) -> Footprint | None:
    """The activations one sample creates in a forward pass, from a run on meta tensors; None when the model cannot
    run on them (data-dependent control flow, tensors made on a fixed device).

    Args:
        model: The model (not run on real data, nothing allocated).
        sample_shape: One sample's shape.
        dtype: The input's dtype.
        output: Picks the tensor to explain from the model's output, run too.

    Returns:
        A Footprint, or None.
    """
    state = {name: torch.empty_like(value, device="meta")
             for name, value in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.empty((1, *sample_shape), dtype=dtype, device="meta")
    tally = _Tally()
    try:
        with tally, torch.no_grad():
            result = torch.func.functional_call(model, state, (x,))
            if output is not None:
                output(result)
    except Exception:  # the model's own code on meta tensors: any failure only means no estimate
        return None
    return Footprint(tally.total + x.numel() * x.element_size(), tally.largest)


def rows_per_pass(attributor, images: int, sample_shape: tuple) -> tuple[int, bool]:
    """How many inputs one forward pass of ``attributor`` holds when explaining ``images`` samples shaped
    ``sample_shape``, and whether it keeps a graph for a backward pass.

    Args:
        attributor: An explainer (LRP or a relprop.attribution method).
        images: How many samples are explained at once.
        sample_shape: One sample's shape.

    Returns:
        A pair (rows, keeps a graph).
    """
    rows = images * attributor.copies_per_input(tuple(sample_shape))
    if attributor.copies_in_passes:
        rows = min(rows, attributor.rows_per_pass(torch.empty((1, *sample_shape), device="meta")))
    return rows, attributor.keeps_graph


def needed_bytes(attributor, per_sample: Footprint, images: int, sample_shape: tuple, itemsize: int = 4) -> int:
    """About how many bytes explaining ``images`` samples at once takes (see the module's docstring).

    Args:
        attributor: An explainer (LRP or a relprop.attribution method).
        per_sample: One sample's Footprint.
        images: How many samples are explained at once.
        sample_shape: One sample's shape.
        itemsize: Bytes per input value.

    Returns:
        A number of bytes.
    """
    rows, backward = rows_per_pass(attributor, images, sample_shape)
    if backward:
        model = rows * (attributor.saved_per_activation * per_sample.total + 2 * per_sample.largest)
    else:
        model = rows * 3 * per_sample.largest
    return int(model + images * IMAGE_COPIES * math.prod(sample_shape) * itemsize)


def available(device: torch.device) -> int | None:
    """Bytes that can still be allocated on the device (None when unknown): free GPU memory, or on the CPU the
    smaller of the system's available memory and what the cgroup (container) limit leaves.

    Args:
        device: The device.

    Returns:
        A number of bytes, or None.
    """
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(limits)) if limits else None


class Budget:
    """How many samples of a shape fit at once in the memory left on a device, from :func:`needed_bytes`' estimate
    (each shape's :func:`footprint` is measured once).

    Args:
        attributor: The explainer (LRP or a relprop.attribution method).
        model: The model it explains.
        device: The device it runs on (its free memory is read once, here).
        output: Picks the tensor to explain from the model's output, as the attributor does.
        knobs: The names a refusal's advice gives the batch size and the input size (the command line passes
            its options, ``("--batch-size", "--size")``).
    """

    def __init__(self, attributor, model, device, output=None, knobs=("batch_size", "size")):
        self.attributor, self.model, self.device, self.output = attributor, model, device, output
        self.knobs = knobs
        self.free = available(torch.device(device))
        self.footprints = {}

    def need(self, shape: tuple, images: int) -> int | None:
        """About how many bytes explaining ``images`` samples shaped ``shape`` (C, H, W) takes.

        Args:
            shape: One sample's shape.
            images: How many samples at once.

        Returns:
            A number of bytes, or None when unknown.
        """
        if shape not in self.footprints:
            self.footprints[shape] = footprint(self.model, shape, output=self.output)
        per_sample = self.footprints[shape]
        if per_sample is None:
            return None
        try:
            return needed_bytes(self.attributor, per_sample, images, shape)
        except ValueError:  # e.g. an occlusion window larger than the image: the image fails on its own later
            return None

    def fitting(self, shape: tuple, wanted: int) -> int:
        """The most samples (up to ``wanted``) of this shape that fit at once.

        Args:
            shape: One sample's shape.
            wanted: How many samples the caller would like at once.

        Returns:
            A count; 0 when not even one fits.
        """
        if self.free is None:
            return wanted
        count = wanted
        while count > 0 and (self.need(shape, count) or 0) > self.free:
            count -= 1
        return count

    def refusal(self, shape: tuple, images: int) -> str:
        """Why ``images`` images shaped ``shape`` (C, H, W) do not fit, naming the batch size and the size to set.

        Args:
            shape: One image's shape.
            images: How many images at once.

        Returns:
            One line of text.
        """
        batch_size, size = self.knobs
        fit = self.fitting(shape, images)
        advice = (f"use {batch_size} {fit} or a smaller {size}" if fit else
                  f"use a smaller {size} (or explain on a device with more memory)")
        return (f"explaining {images} image{'s' if images > 1 else ''} of {shape[1]}x{shape[2]} pixels at once "
                f"needs about {gib(self.need(shape, images))} but {gib(self.free)} are available on "
                f"{self.device}; {advice}")


def gib(size: int) -> str:
    """A size in bytes as text: GiB from a quarter GiB up, else MiB.

    Args:
        size: The size in bytes.

    Returns:
        E.g. "1.5 GiB".

    Example:
        >>> from relprop import memory
        >>> memory.gib(3 * 2 ** 29), memory.gib(5 * 2 ** 20)
        ('1.5 GiB', '5 MiB')
    """
    return f"{size / 2 ** 30:.1f} GiB" if size >= 2 ** 28 else f"{size / 2 ** 20:.0f} MiB"


__all__ = ["Footprint", "footprint", "rows_per_pass", "needed_bytes", "available", "gib", "Budget"]
