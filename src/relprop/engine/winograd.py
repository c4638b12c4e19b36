"""Winograd convolutions F(2x2, 3x3) for the CPU passes of evaluation metrics: a 3x3 stride-1 convolution computed as
16 matrix products over 4x4 input tiles, one per 2x2 output tile (Lavin and Gray, "Fast algorithms for convolutional
neural networks", 2016), which needs 16 multiply-adds per input channel and tile where the direct convolution needs
36: 2.25x fewer. Plain passes over large maps use F(4x4, 3x3) (36 products over 6x6 tiles, 4x fewer multiply-adds;
``applies_large``): VGG-16's plain pass of 4 images at 224 px took 0.843 s so, 1.056 s in 2x2 tiles alone and 1.258 s
by torch's convolutions (one thread), with its probabilities as close to float64's as torch's (2.9e-7 relative, torch
3.8e-7); ResNet-50's, whose only such layers are four of 128 channels at 28x28, was no faster (0.399 s, 0.394 s in 2x2
tiles alone).

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
256 channels 0.5-1.1x. Transforming a 512-channel weight takes 2.7 ms (24 ms for 4x4 tiles; ``transformed``), once
per Runner. In whole calls (4 images at 224 px, with and without alternating in one process) VGG-16's region
perturbation and selectivity ran 1.13-1.26x faster; ResNet-50, whose wide layers are its 14x14 and 7x7 stages, ran
0.92-1.04x under a first rule (256 channels, 8x8 inputs), hence the rule ``applies`` holds now: both channel counts at
least ``MIN_CHANNELS``, maps of at least ``MIN_POSITIONS`` outputs per row on that many channels (on 512, half as
many: ResNet-50's 7x7 stage, 4 rows in 8.4 ms against torch's 9.5 with the caches cleared), matrix products of at
least ``MIN_PRODUCT`` multiply-adds.

The incremental engine's crops of one convolution, one batch per size of box, go through ``convolve_crops`` together:
their tiles side by side in one set of matrix products, so the transformed weights (16 MiB for 512 channels, read
from memory, not cache, in a pass) are read once for all of them. IROF's 95 steps of small crops ran 1.34x faster so
on VGG-16 and 1.06x on ResNet-50 (4 images at 224 px, one thread). The crops' convolutions of one call each, replayed
on random data of their shapes with the caches cleared between calls (the least of 3-7 rounds), in runs of 16 MiB
(RUN_BYTES) where they were 8 (BAND_BYTES) and runs of small batches transformed as one (``_small_batches``): VGG-16's
region perturbation 683 -> 595 ms, its IROF 9.78 -> 7.72 s, the numbers bit for bit the same.
"""
from __future__ import annotations

import weakref

import torch

from .intercept import OpMode

BAND_BYTES = 8 << 20  # the most the matrices' input rows of one band of tile rows hold
RUN_BYTES = 16 << 20  # the same for one run of crops (convolve_crops): they are read once per run, not per band
SMALL_BATCH_TILES = 32  # runs of crops whose batches average fewer tiles are transformed as one (_small_batches)
MIN_PRODUCT = 1 << 22  # the fewest multiply-adds per matrix product: smaller ones ran slower than torch's (see above)
MIN_POSITIONS = 64  # the fewest output positions per row on MIN_CHANNELS channels (proportionally fewer on more)
MIN_CHANNELS = 256  # the fewest channels in and out a layer must have to be computed so (see the module docstring)
LARGE_MIN_CHANNELS = 128  # F(4x4, 3x3): the fewest channels in and out (see applies_large)
LARGE_MIN_POSITIONS = 28 * 28  # F(4x4, 3x3): the fewest output positions per row
LARGE_CROP_POSITIONS = 12 * 12  # F(4x4, 3x3) on crops: the fewest outputs a row on average (on 512 channels)
LARGE_CROP_POSITIONS_MANY = 8 * 8  # the same from LARGE_CROP_MANY_ROWS crops on (their weights read once for all)
LARGE_CROP_MANY_ROWS = 16
LARGE_CROP_WORK = 0.75  # F(4x4, 3x3) on crops: its products' multiply-adds at most this share of F(2x2, 3x3)'s
SAVING_RATE = 90e9  # multiply-adds 4x4 tiles leave out per second they save on crops (see large_tiles_saving)
TRANSFORM_RATE = 1.6e9  # bytes a second written by transformed (4x4 tiles of 512 channels, 38 MB: 22-24 ms)


def applies(source: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups) -> bool:
    """Whether a convolution of source by weight is computed here: a 2-D 3x3 kernel at stride and dilation 1,
    ungrouped, float32 on the CPU, channels-last input (the layout of relprop's passes over images, so the output
    keeps the layout the direct convolution would give it), both channel counts at least MIN_CHANNELS, maps of at
    least MIN_POSITIONS outputs per row on MIN_CHANNELS channels (proportionally fewer on more: 32 on 512), matrix
    products of at least MIN_PRODUCT multiply-adds (tiles x channels in x channels out), no gradient recorded (the
    passes of metrics run in inference mode), and a weight made outside inference mode (an inference tensor has no
    version to tell an in-place change of it by, so its transform could not be kept)."""
    return applies_crops([(source, padding)], weight, stride, dilation, groups)


def applies_crops(sources, weight: torch.Tensor, stride, dilation, groups) -> bool:
    """``applies`` for batches of crops convolved together (``convolve_crops``: a list of (source, padding)): each
    batch as there, their positions per row on average and their tiles together."""
    if not (_kernel_applies(weight, stride, dilation, groups)
            and weight.shape[0] >= MIN_CHANNELS and weight.shape[1] >= MIN_CHANNELS):
        return False
    tiles = positions = rows = 0
    for source, padding in sources:
        if not _source_applies(source, weight):
            return False
        _, _, out_rows, out_columns, tiles_down, tiles_across = _geometry(source, padding)
        if out_rows < 1 or out_columns < 1:
            return False
        tiles += len(source) * tiles_down * tiles_across
        positions += len(source) * out_rows * out_columns
        rows += len(source)
    return (rows > 0 and positions * min(weight.shape[:2]) >= rows * MIN_POSITIONS * MIN_CHANNELS
            and tiles * weight.shape[0] * weight.shape[1] >= MIN_PRODUCT)


def applies_large(source: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups) -> bool:
    """Whether a convolution is computed in output tiles of 4x4 (F(4x4, 3x3): 36 multiply-adds per input channel and
    tile where the direct sum needs 144, 4x fewer): as ``applies``, but channels in and out at least
    LARGE_MIN_CHANNELS and at least LARGE_MIN_POSITIONS output positions per row, where its larger transforms pay
    (one thread, 4 rows, caches cleared: VGG-16's 512 channels at 28x28 1.42x faster than in 2x2 tiles, 256 at 56x56
    1.31x, 128 to 256 at 56x56 1.50x faster than torch's convolution, 128 at 112x112 1.16x; 512 at 14x14 no faster
    than 2x2 tiles, 64 at 56x56 slower than torch's). Its transforms scale by up to 5 and 1/24, so its numbers are
    further from the exact sum than 2x2 tiles' (5e-6 to 1e-5 of the largest output, against float64, where torch's
    own convolution gave 1e-6 to 2e-6 and 2x2 tiles 3e-7 to 5e-7), still float32 rounding."""
    if not (_kernel_applies(weight, stride, dilation, groups) and _source_applies(source, weight)
            and min(weight.shape[:2]) >= LARGE_MIN_CHANNELS):
        return False
    _, _, out_rows, out_columns, tiles_down, tiles_across = _geometry(source, padding, 4)
    return (out_rows * out_columns >= LARGE_MIN_POSITIONS
            and len(source) * tiles_down * tiles_across * weight.shape[0] * weight.shape[1] >= MIN_PRODUCT)


def _kernel_applies(weight, stride, dilation, groups) -> bool:
    return (weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3) and weight.dtype == torch.float32
            and groups == 1 and _ones(stride) and _ones(dilation)
            and not weight.is_inference() and not torch.is_grad_enabled())


def _source_applies(source, weight) -> bool:
    return (source.dim() == 4 and source.device.type == "cpu" and source.dtype == torch.float32
            and source.shape[1] == weight.shape[1] and source.is_contiguous(memory_format=torch.channels_last))


def _ones(value) -> bool:
    return all(item == 1 for item in (value if isinstance(value, (tuple, list)) else (value,)))


def transform_seconds(weight: torch.Tensor, size: int) -> float:
    """About what making weight's transform for size x size tiles takes, in seconds (TRANSFORM_RATE)."""
    return (size + 2) ** 2 * weight.shape[0] * weight.shape[1] * weight.element_size() / TRANSFORM_RATE


def transformed(weight: torch.Tensor, size: int = 2) -> torch.Tensor:
    """(16 or 36, channels in, channels out), a transposed view: G g G^T per kernel for F(size x size, 3x3), as one
    matrix product of the Kronecker product G x G (16 or 36 by 9) with the kernels (9 by channels out x in): on a
    512-channel layer, one thread, 2.7 ms in 2x2 tiles and 24 ms in 4x4 (most of it the first touch of the 38 MB it
    writes), where applying G's rows as sums took 7 ms and 40 ms (VGG-16's transforms are made in each metric's
    call)."""
    out, channels = weight.shape[:2]
    g = torch.tensor(_G[size], dtype=torch.float64)
    kron = torch.kron(g, g).to(weight.dtype)
    u = kron @ weight.detach().reshape(out * channels, 9).t()
    return u.view((size + 2) ** 2, out, channels).transpose(1, 2)


_G = {2: ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
      # F(4x4, 3x3), interpolation points 0, 1, -1, 2, -2 and infinity
      4: ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
          (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))}


class Transforms:
    """The transformed weights of one evaluation ((id, output tile size) -> (a weak reference to the weight, its
    version, the transform)), made again after a weight changed in place and dropped with their weight; like a
    Runner's channels-last weight copies, nothing outlives it."""

    def __init__(self):
        self.entries: dict = {}
        self.forgone: dict = {}  # (id, size) -> (a weak reference to the weight, seconds saved but for its transform)

    def __call__(self, weight: torch.Tensor, size: int = 2) -> torch.Tensor:
        key = (id(weight), size)
        if not self.made(weight, size):
            self.entries[key] = (weakref.ref(weight, self._forget(key)), weight._version, transformed(weight, size))
            self.forgone.pop(key, None)
        return self.entries[key][2]

    def made(self, weight: torch.Tensor, size: int) -> bool:
        """Whether weight's transform for size x size tiles is kept, and made since its last in-place change."""
        entry = self.entries.get((id(weight), size))
        return entry is not None and entry[0]() is weight and entry[1] == weight._version

    def worth(self, weight: torch.Tensor, size: int, saving: float) -> bool:
        """Whether to compute by weight's transform for size x size tiles where that saves ``saving`` seconds over
        the transform at hand: made already, or once the savings passed up so far for want of it (this one
        included) reach what making it costs (``transform_seconds``). Rent until the rent paid would buy: a
        transform made for one pass that cannot repay it (VGG-16's region perturbation made two 512-channel ones for
        one pass of its 8 steps, 24 ms each, saving 12 and 21 ms) is not made, and chains of many passes (IROF)
        make it after a pass or two, never paying more than twice the better choice."""
        if self.made(weight, size):
            return True
        key = (id(weight), size)
        owner, before = self.forgone.get(key, (None, 0.0))
        forgone = (before if owner is not None and owner() is weight else 0.0) + saving
        if forgone >= transform_seconds(weight, size):
            return True
        self.forgone[key] = (weakref.ref(weight), forgone)
        return False

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
    """A 3x3 stride-1 convolution of source (N, C, H, W, channels-last) with transformed weights u (16 matrices:
    F(2x2, 3x3); 36: F(4x4, 3x3)), zero-padded by padding (an int or (rows, columns)); channels-last output, as
    torch's convolution gives for such an input."""
    size = _SIZES[u.shape[0]]
    geometry = _geometry(source, padding, size)
    tiles_down, tiles_across = geometry[4:]
    n, channels = source.shape[:2]
    padded = _padded(source, geometry, size)
    tiles = source.new_empty((n, tiles_down, size, tiles_across, size, u.shape[-1]))
    band = max(1, BAND_BYTES // (n * tiles_across * channels * 4 * u.shape[0]))  # tile rows per band
    for first in range(0, tiles_down, band):
        last = min(first + band, tiles_down)
        _band(padded[:, size * first:size * last + 2], u, tiles[:, first:last])
    return _finished(tiles, geometry, bias)


def _band(padded, u, tiles):
    """The output tiles (N, tile rows, m, tile columns, m, out) of a band of padded input (N, m rows + 2, W, C)."""
    n, tiles_down, size, tiles_across, _, _ = tiles.shape
    channels, side = padded.shape[-1], size + 2
    v = padded.new_empty((side, side, n, tiles_down, tiles_across, channels))
    _input_tiles(padded, v)
    m = torch.bmm(v.view(side * side, -1, channels), u).view(side, side, n, tiles_down, tiles_across, u.shape[-1])
    _output_tiles(m, tiles)


def _input_tiles(padded, v):
    """B^T d B of every tile of padded (N, m tile rows + 2, m tile columns + 2, C) into v (m + 2, m + 2, N, tile
    rows, tile columns, C): along rows, then along columns."""
    side, tiles_down, tiles_across = v.shape[0], v.shape[3], v.shape[4]
    step, rows_of = side - 2, _BT2 if side == 4 else _BT4
    r = [padded[:, k::step][:, :tiles_down] for k in range(side)]
    for a, t in enumerate(rows_of(r)):
        c = [t[:, :, k::step][:, :, :tiles_across] for k in range(side)]
        rows_of(c, out=v[a])


def _BT2(d, out=None):
    """The rows of B^T of F(2x2, 3x3) applied to the 4 slices d: d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    if out is None:
        return d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _BT4(d, out=None):
    """The rows of B^T of F(4x4, 3x3) applied to the 6 slices d: 4 d0 - 5 d2 + d4, -4 (d1 + d2) + d3 + d4,
    4 (d1 - d2) - d3 + d4, 2 (d3 - d1) - d2 + d4, 2 (d1 - d3) - d2 + d4, 4 d1 - 5 d3 + d5."""
    sums, differences = torch.add(d[4], d[2], alpha=-4), torch.add(d[3], d[1], alpha=-4)
    even, odd = d[4] - d[2], (d[3] - d[1]) * 2
    if out is None:
        return (torch.add(d[4], d[0], alpha=4).add_(d[2], alpha=-5), sums + differences, sums - differences,
                even + odd, even - odd, torch.add(d[5], d[1], alpha=4).add_(d[3], alpha=-5))
    torch.add(d[4], d[0], alpha=4, out=out[0]).add_(d[2], alpha=-5)
    torch.add(sums, differences, out=out[1])
    torch.sub(sums, differences, out=out[2])
    torch.add(even, odd, out=out[3])
    torch.sub(even, odd, out=out[4])
    torch.add(d[5], d[1], alpha=4, out=out[5]).add_(d[3], alpha=-5)


def _output_tiles(m, tiles):
    """A^T M A of the products m (m + 2, m + 2, N, tile rows, tile columns, out): along rows, then along columns,
    each output tile into its place in tiles (N, tile rows, m, tile columns, m, out)."""
    rows_of = _AT2 if len(m) == 4 else _AT4
    size = tiles.shape[2]
    for i, s in enumerate(rows_of(m)):
        rows_of(s, out=[tiles[:, :, i, :, j] for j in range(size)])


def _AT2(m, out=None):
    """The rows of A^T of F(2x2, 3x3): m0 + m1 + m2, m1 - m2 - m3."""
    if out is None:
        return m[0] + m[1] + m[2], m[1] - m[2] - m[3]
    torch.add(m[0] + m[1], m[2], out=out[0])
    torch.sub(m[1] - m[2], m[3], out=out[1])


def _AT4(m, out=None):
    """The rows of A^T of F(4x4, 3x3): m0 + m1 + m2 + m3 + m4, (m1 - m2) + 2 (m3 - m4), (m1 + m2) + 4 (m3 + m4),
    (m1 - m2) + 8 (m3 - m4) + m5."""
    sums, differences = m[1] + m[2], m[1] - m[2]
    far_sums, far_differences = m[3] + m[4], m[3] - m[4]
    if out is None:
        return (m[0] + sums + far_sums, torch.add(differences, far_differences, alpha=2),
                torch.add(sums, far_sums, alpha=4), torch.add(differences, far_differences, alpha=8).add_(m[5]))
    torch.add(m[0] + sums, far_sums, out=out[0])
    torch.add(differences, far_differences, alpha=2, out=out[1])
    torch.add(sums, far_sums, alpha=4, out=out[2])
    torch.add(differences, far_differences, alpha=8, out=out[3]).add_(m[5])


_SIZES = {16: 2, 36: 4}  # matrices per transform -> output tile size


def _geometry(source, padding, size=2):
    """(top, left, output rows, output columns, tile rows, tile columns) of a 3x3 convolution padded so, in output
    tiles of size x size."""
    top, left = (padding, padding) if isinstance(padding, int) else tuple(padding)
    rows, columns = source.shape[2] + 2 * top - 2, source.shape[3] + 2 * left - 2
    return top, left, rows, columns, -(-rows // size), -(-columns // size)


def _padded(source, geometry, size=2):
    """source (N, C, H, W) zero-padded to whole tiles, as (N, H', W', C): channels innermost, as in memory."""
    top, left, _, _, tiles_down, tiles_across = geometry
    height, width = source.shape[2:]
    padded = torch.nn.functional.pad(source, (left, size * tiles_across + 2 - width - left,
                                              top, size * tiles_down + 2 - height - top))
    return padded.permute(0, 2, 3, 1)


def _finished(tiles, geometry, bias):
    """The output (N, out, rows, columns, channels-last) from its tiles (N, tile rows, m, tile columns, m, out), the
    bias added."""
    _, _, rows, columns, tiles_down, tiles_across = geometry
    size = tiles.shape[2]
    out = tiles.view(len(tiles), size * tiles_down, size * tiles_across, -1)[:, :rows, :columns]
    out = out + bias if bias is not None else out.contiguous()
    return out.permute(0, 3, 1, 2)


def convolve_crops(sources, u: torch.Tensor, bias: torch.Tensor | None) -> list:
    """``convolve`` of several batches of crops (a list of (source, padding), of any sizes) by one weight: their
    tiles side by side in one set of matrix products (16 or 36, as u holds), in runs of at most RUN_BYTES of tiles,
    where each batch alone would read the weights once more. One thread, four single-row crops of 9x9 to 14x14 on 512
    channels, the caches cleared before each call as a pass leaves them: 9.3-15.2 ms together, 13.6-20.2 ms one by
    one, 21.2-28.0 ms by torch's convolution. A batch larger than a run is convolved alone (in bands). A run of small
    batches (fewer than SMALL_BATCH_TILES tiles each on average) has its tiles' rows transformed batch by batch
    and the rest in one go (``_small_batches``)."""
    channels, size = u.shape[1], _SIZES[u.shape[0]]
    side = size + 2
    per_tile = side * side * channels * 4
    geometries = [_geometry(source, padding, size) for source, padding in sources]
    counts = [len(source) * g[4] * g[5] for (source, _), g in zip(sources, geometries)]
    outs = [None] * len(sources)
    run: list = []

    def flush():
        if not run:
            return
        total = sum(counts[i] for i in run)
        if total < SMALL_BATCH_TILES * len(run):
            batches = [(sources[i][0], geometries[i]) for i in run]
            for i, out in zip(run, _small_batches(batches, total, u, bias)):
                outs[i] = out
            run.clear()
            return
        v = sources[run[0]][0].new_empty((side, side, total, channels))
        start = 0
        for i in run:
            source, g = sources[i][0], geometries[i]
            _input_tiles(_padded(source, g, size),
                         v[:, :, start:start + counts[i]].view(side, side, len(source), g[4], g[5], channels))
            start += counts[i]
        m = torch.bmm(v.view(side * side, total, channels), u).view(side, side, total, u.shape[-1])
        start = 0
        for i in run:
            source, g = sources[i][0], geometries[i]
            tiles = source.new_empty((len(source), g[4], size, g[5], size, u.shape[-1]))
            _output_tiles(m[:, :, start:start + counts[i]].view(side, side, len(source), g[4], g[5], -1), tiles)
            outs[i] = _finished(tiles, g, bias)
            start += counts[i]
        run.clear()

    for i, (source, padding) in enumerate(sources):
        if counts[i] * per_tile > RUN_BYTES:
            outs[i] = convolve(source, u, bias, padding)
            continue
        if sum(counts[j] for j in run) + counts[i] > RUN_BYTES // per_tile:
            flush()
        run.append(i)
    flush()
    return outs


def _small_batches(batches, total, u, bias) -> list:
    """The outputs of a run of small batches (a list of (source, geometry)), ``total`` tiles in all: each batch's
    tiles combined along their rows by B^T, read as overlapping windows of its padded source and written side by
    side, then every transform after that in one go for the run, each batch's output tiles copied into place: 54 ops
    a batch in 4x4 tiles where a batch transformed apart costs 360 (35 and 129 in 2x2 tiles), whatever its size.
    IROF's crops come a row or two to a batch (a batch per superpixel's box size), 15-45 tiles each; region
    perturbation's 4 rows of a patch, 45-145. Reading each batch's rows as overlapping windows costs more than the
    ops it saves on large batches, hence SMALL_BATCH_TILES."""
    channels, outputs, size = u.shape[1], u.shape[2], _SIZES[u.shape[0]]
    side, rows_of, first = size + 2, _BT2 if size == 2 else _BT4, batches[0][0]
    combined = first.new_empty((side, total, side, channels))  # per row of B^T: (tiles, tile columns, channels)
    start = 0
    for source, g in batches:
        padded, n, count = _padded(source, g, size), len(source), len(source) * g[4] * g[5]
        batch, down, across, inner = padded.stride()
        windows = [padded[:, k:].as_strided((n, g[4], g[5], side, channels), (batch, size * down, size * across,
                                                                               across, inner)) for k in range(side)]
        rows_of(windows, out=[combined[a, start:start + count].view(n, g[4], g[5], side, channels)
                              for a in range(side)])
        start += count
    v = first.new_empty((side, side, total, channels))
    for a in range(side):
        rows_of([combined[a][:, k] for k in range(side)], out=v[a])
    m = torch.bmm(v.view(side * side, total, channels), u).view(side, side, total, 1, 1, outputs)
    tiles = first.new_empty((total, 1, size, 1, size, outputs))  # every tile a batch of one, as _output_tiles takes
    _output_tiles(m, tiles)
    if bias is not None:
        tiles += bias  # once for the run, not per batch
    placed, start = [], 0
    for source, g in batches:
        n, count = len(source), len(source) * g[4] * g[5]
        grid = first.new_empty((n, g[4], size, g[5], size, outputs))
        grid.copy_(tiles[start:start + count].view(n, g[4], g[5], size, size, outputs).permute(0, 1, 3, 2, 4, 5))
        placed.append(_finished(grid, g, None))
        start += count
    return placed


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
    """conv2d's result by ``convolve`` where it ``applies_large`` (in 4x4 output tiles) or ``applies`` (2x2), and
    the padding is numeric; else None."""
    if isinstance(padding, int):
        padding = (padding, padding)
    elif not (isinstance(padding, (tuple, list)) and len(padding) == 2):
        return None  # "same", "valid" or one value in a tuple: torch's own
    padding = tuple(padding)
    if applies_large(input, weight, stride, padding, dilation, groups):
        return convolve(input, transforms(weight, 4), bias, padding)
    if not applies(input, weight, stride, padding, dilation, groups):
        return None
    return convolve(input, transforms(weight), bias, padding)


def conv2d_crops(transforms: Transforms, sources, weight, bias=None, dilation=1, groups=1):
    """The stride-1 convolutions of several batches of crops (a list of (source, padding), numeric paddings) by one
    weight, by ``convolve_crops`` where ``applies_crops``, in 4x4 tiles where ``large_tiles_pay``; else None."""
    sources = [(source, (padding, padding) if isinstance(padding, int) else tuple(padding))
               for source, padding in sources]
    if any(len(padding) != 2 or isinstance(padding[0], str) for _, padding in sources):
        return None
    if not applies_crops(sources, weight, 1, dilation, groups):
        return None
    large = large_tiles_pay(sources, weight) and transforms.worth(weight, 4, large_tiles_saving(sources, weight,
                                                                                               transforms))
    return convolve_crops(sources, transforms(weight, 4 if large else 2), bias)


def large_tiles_pay(sources, weight: torch.Tensor) -> bool:
    """Whether crops that ``applies_crops`` takes go in 4x4 tiles: at least LARGE_CROP_POSITIONS outputs a row on
    average on 512 channels (proportionally more on fewer), and their 36 products per tile at most LARGE_CROP_WORK of
    what 2x2 tiles need (a crop whose outputs do not fill the 4x4 tiles wastes their edges). Four rows of crops, one
    thread, caches cleared, 4x4 against 2x2 tiles: on 512 channels 12x12 outputs 1.27x faster, 14x14 1.09x, 10x10
    0.95x, 8x8 0.99x; on 256 channels 18x18 1.09x, 22x22 1.15x, 14x14 0.96x, 10x10 0.81x; four single rows of 6x8 to
    7x9 on 512 channels 0.87x. VGG-16's selectivity (56 px patches) ran 1.06x faster so, its region perturbation (16
    px) and IROF as fast. From LARGE_CROP_MANY_ROWS crops on (a pass of several steps, engine.together), which read
    the 2.25x larger transformed weights once for all of them, LARGE_CROP_POSITIONS_MANY outputs a row suffice: 24
    crops on 512 channels, 8x8 outputs 1.14x faster in 4x4 tiles (4 crops: 0.85x), 12x12 1.33x; on 256 channels
    12x12 as fast, 16x16 1.13x; VGG-16's IROF (95 steps, 16 a pass) took 13.7 s against 14.3 s without."""
    small, large, positions, rows = _tile_work(sources)
    least = LARGE_CROP_POSITIONS_MANY if rows >= LARGE_CROP_MANY_ROWS else LARGE_CROP_POSITIONS
    return positions * min(weight.shape[:2]) >= rows * least * 512 and large <= LARGE_CROP_WORK * small


def large_tiles_saving(sources, weight: torch.Tensor, transforms: Transforms) -> float:
    """About the seconds crops that ``large_tiles_pay`` takes save in 4x4 tiles over 2x2 ones: the matrix products'
    multiply-adds left out at SAVING_RATE, and the 2x2 transform where it is not made yet (``Transforms.worth`` weighs
    this against making the 4x4 one). 4x4 tiles' products are fewer but have fewer rows each, and read 2.25x the
    weights: on VGG-16's region perturbation (one pass of 8 steps, 512 channels, one thread, the transforms made
    before) the four batches of crops that ``large_tiles_pay`` takes saved 10 to 26 ms in 4x4 tiles, 0.28 to 0.62 of
    their left-out multiply-adds at the products' 43 billion a second; SAVING_RATE counts about half (0.48)."""
    small, large = _tile_work(sources)[:2]
    saving = (small - large) * weight.shape[0] * weight.shape[1] / SAVING_RATE
    return saving + (0.0 if transforms.made(weight, 2) else transform_seconds(weight, 2))


def _tile_work(sources) -> tuple:
    """(matrix elements per channel pair in 2x2 tiles, the same in 4x4 tiles, output positions, rows) of crops."""
    small = large = positions = rows = 0
    for source, padding in sources:
        _, _, out_rows, out_columns, tiles_down, tiles_across = _geometry(source, padding, 2)
        small += len(source) * tiles_down * tiles_across * 16
        _, _, _, _, tiles_down, tiles_across = _geometry(source, padding, 4)
        large += len(source) * tiles_down * tiles_across * 36
        positions += len(source) * out_rows * out_columns
        rows += len(source)
    return small, large, positions, rows
