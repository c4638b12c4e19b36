"""Winograd convolutions F(2x2, 3x3) for the CPU passes of evaluation metrics: a 3x3 stride-1 convolution computed as
16 matrix products over 4x4 input tiles, one per 2x2 output tile (Lavin and Gray, "Fast algorithms for convolutional
neural networks", 2016), which needs 16 multiply-adds per input channel and tile where the direct convolution needs
36: 2.25x fewer.

With a kernel g (3x3), an input tile d (4x4) and the transforms

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

the output tile is A^T [(G g G^T) * (B^T d B)] A, where * multiplies element-wise. Summed over input channels, each of
the 16 elements is a matrix product (tiles x channels in) @ (channels in x channels out). Every transform adds or
halves, so the numbers are a direct convolution's to float rounding: on 512 channels, 5e-7 of the largest output
against float64, where torch's own channels-last convolution gave 2.3e-6.

Where it pays (one thread, an AMD EPYC with AVX-512, float32, torch 2.14.1): the matrix products run at 40-46
billion multiply-adds a second where torch's convolution runs at about 56, and the transforms read and write every
tile, so it pays only where channels are many and products large: on 512 channels 1.74x for 4 rows of 14x14 and
1.2-1.4x for single crops of 9x9 to 12x12; on 256 channels 1.13-1.29x for 4 rows of 14x14 to 56x56 (in bands of
tile rows that stay in cache: ``BAND_BYTES``), 1.0-1.2x for single crops of 10x10 to 12x12 and 0.54x at 8x8; below
256 channels 0.5-1.1x. Transforming a weight takes about 10 ms for 512 channels, once per Runner. In whole calls
(4 images at 224 px, with and without alternating in one process) VGG-16's region perturbation and selectivity ran
1.13-1.26x faster; ResNet-50, whose wide layers are its 14x14 and 7x7 stages, ran 0.92-1.04x under a first rule
(256 channels, 8x8 inputs), hence the rule ``applies`` holds now: both channel counts at least ``MIN_CHANNELS``,
maps of at least ``MIN_POSITIONS`` outputs, matrix products of at least ``MIN_PRODUCT`` multiply-adds.
"""
from __future__ import annotations

import weakref

import torch

from .intercept import OpMode

BAND_BYTES = 8 << 20  # the most the 16 matrices' input rows of one band of tile rows hold (see convolve)
MIN_PRODUCT = 1 << 22  # the fewest multiply-adds per matrix product: smaller ones ran slower than torch's (see above)
MIN_POSITIONS = 64  # the fewest output positions per row: ResNet-50's 7x7 stage (its tiles cover 8x8) gained nothing
MIN_CHANNELS = 256  # the fewest channels in and out a layer must have to be computed so (see the module docstring)


def applies(source: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups) -> bool:
    """Whether a convolution of source by weight is computed here: a 2-D 3x3 kernel at stride and dilation 1,
    ungrouped, float32 on the CPU, channels-last input (the layout of relprop's passes over images, so the output
    keeps the layout the direct convolution would give it), both channel counts at least MIN_CHANNELS, at least
    MIN_POSITIONS output positions per row, matrix products of at least MIN_PRODUCT multiply-adds (tiles x channels
    in x channels out), no gradient recorded (the passes of metrics run in inference mode), and a weight made outside
    inference mode (an inference tensor has no version to tell an in-place change of it by, so its transform could
    not be kept)."""
    if not (source.dim() == 4 and weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3)
            and source.device.type == "cpu" and source.dtype == torch.float32 and weight.dtype == torch.float32
            and groups == 1 and _ones(stride) and _ones(dilation)
            and weight.shape[0] >= MIN_CHANNELS and weight.shape[1] >= MIN_CHANNELS
            and source.shape[1] == weight.shape[1] and not weight.is_inference()
            and source.is_contiguous(memory_format=torch.channels_last) and not torch.is_grad_enabled()):
        return False
    rows, columns = source.shape[2] + 2 * padding[0] - 2, source.shape[3] + 2 * padding[1] - 2
    tiles = len(source) * -(-rows // 2) * -(-columns // 2)
    return rows * columns >= MIN_POSITIONS and tiles * weight.shape[0] * weight.shape[1] >= MIN_PRODUCT


def _ones(value) -> bool:
    return all(item == 1 for item in (value if isinstance(value, (tuple, list)) else (value,)))


def transformed(weight: torch.Tensor) -> torch.Tensor:
    """(16, channels in, channels out), a transposed view: G g G^T per kernel, G's rows applied as sums and halvings
    of the kernel's rows, then of its columns (on a 512-channel layer 10 ms, one thread)."""
    out, channels = weight.shape[:2]
    k = weight.detach().reshape(out * channels, 9).t().contiguous().view(3, 3, out, channels)
    r = torch.stack((k[0], (k[0] + k[1] + k[2]) * 0.5, (k[0] - k[1] + k[2]) * 0.5, k[2]))
    u = torch.stack((r[:, 0], (r[:, 0] + r[:, 1] + r[:, 2]) * 0.5, (r[:, 0] - r[:, 1] + r[:, 2]) * 0.5, r[:, 2]), 1)
    return u.view(16, out, channels).transpose(1, 2)


class Transforms:
    """The transformed weights of one evaluation (id -> (a weak reference to the weight, its version, the transform)),
    made again after a weight changed in place and dropped with their weight; like a Runner's channels-last weight
    copies, nothing outlives it."""

    def __init__(self):
        self.entries: dict = {}

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        key = id(weight)
        entry = self.entries.get(key)
        if entry is None or entry[0]() is not weight or entry[1] != weight._version:
            entry = self.entries[key] = (weakref.ref(weight, self._forget(key)), weight._version, transformed(weight))
        return entry[2]

    def _forget(self, key):
        """A callback that drops key's entry once its weight is gone (a weight a parametrization makes anew each
        pass leaves no transforms behind), unless the key was taken by a newer weight since."""
        owner = weakref.ref(self)

        def forget(reference):
            transforms = owner()
            if transforms is not None and transforms.entries.get(key, (None,))[0] is reference:
                del transforms.entries[key]
        return forget


def convolve(source: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, padding) -> torch.Tensor:
    """A 3x3 stride-1 convolution of source (N, C, H, W, channels-last) with transformed weights u, zero-padded by
    padding (an int or (rows, columns)); channels-last output, as torch's convolution gives for such an input."""
    top, left = (padding, padding) if isinstance(padding, int) else tuple(padding)
    n, channels, height, width = source.shape
    rows, columns = height + 2 * top - 2, width + 2 * left - 2
    tiles_down, tiles_across = -(-rows // 2), -(-columns // 2)
    padded = torch.nn.functional.pad(source, (left, 2 * tiles_across + 2 - width - left,
                                              top, 2 * tiles_down + 2 - height - top))
    padded = padded.permute(0, 2, 3, 1)  # (N, H, W, C): channels innermost, as in memory
    tiles = source.new_empty((n, tiles_down, 2, tiles_across, 2, u.shape[-1]))
    band = max(1, BAND_BYTES // (n * tiles_across * channels * 64))  # tile rows per band
    for first in range(0, tiles_down, band):
        last = min(first + band, tiles_down)
        _band(padded[:, 2 * first:2 * last + 2], u, tiles[:, first:last])
    out = tiles.view(n, 2 * tiles_down, 2 * tiles_across, -1)[:, :rows, :columns]
    out = out + bias if bias is not None else out.contiguous()
    return out.permute(0, 3, 1, 2)


def _band(padded, u, tiles):
    """The output tiles (N, tile rows, 2, tile columns, 2, out) of a band of padded input (N, 2 rows + 2, W, C)."""
    n, tiles_down, _, tiles_across, _, _ = tiles.shape
    channels = padded.shape[-1]
    # B^T d B: along rows, then along columns, into the 16 matrices' rows
    r = [padded[:, k::2][:, :tiles_down] for k in range(4)]
    along_rows = (r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])
    v = padded.new_empty((4, 4, n, tiles_down, tiles_across, channels))
    for a, t in enumerate(along_rows):
        c = [t[:, :, k::2][:, :, :tiles_across] for k in range(4)]
        torch.sub(c[0], c[2], out=v[a, 0])
        torch.add(c[1], c[2], out=v[a, 1])
        torch.sub(c[2], c[1], out=v[a, 2])
        torch.sub(c[1], c[3], out=v[a, 3])
    m = torch.bmm(v.view(16, -1, channels), u).view(4, 4, n, tiles_down, tiles_across, u.shape[-1])
    # A^T M A: along rows, then along columns, each 2x2 output tile into its place
    for i, s in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):
        torch.add(s[0] + s[1], s[2], out=tiles[:, :, i, :, 0])
        torch.sub(s[1] - s[2], s[3], out=tiles[:, :, i, :, 1])


class WinogradPasses(OpMode):
    """Plain forward passes with every convolution that ``applies`` computed by ``convolve`` (transformed weights
    kept in ``transforms``); any other call runs as it is."""

    def __init__(self, transforms: Transforms):
        super().__init__()
        self.transforms = transforms

    def op(self, func, name, family, args, kwargs):
        if name.rsplit(".", 1)[-1] == "conv2d":
            out = conv2d(self.transforms, *args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def conv2d(transforms: Transforms, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d's result by ``convolve`` where it ``applies`` (and the padding is numeric), else None."""
    if isinstance(padding, int):
        padding = (padding, padding)
    elif not (isinstance(padding, (tuple, list)) and len(padding) == 2):
        return None  # "same", "valid" or one value in a tuple: torch's own
    if not applies(input, weight, stride, tuple(padding), dilation, groups):
        return None
    return convolve(input, transforms(weight), bias, tuple(padding))
