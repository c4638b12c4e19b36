import math

import numpy as np
import pytest
import torch

from relprop import evaluate
from relprop.engine import winograd
from relprop.engine.incremental import Incremental
from relprop.engine.winograd import (Transforms, WinogradPasses, applies, applies_crops, applies_large, convolve,
                                     convolve_crops, large_tiles_pay, transform_seconds, transformed)


def direct(x, weight, bias, padding):
    """A 3x3 stride-1 convolution in float64 numpy, from its definition: out[n, o, i, j] = bias[o] +
    sum over c, a, b of weight[o, c, a, b] * padded[n, c, i + a, j + b]."""
    top, left = padding
    xs = np.pad(x.double().numpy(), ((0, 0), (0, 0), (top, top), (left, left)))
    w = weight.double().numpy()
    rows, columns = xs.shape[2] - 2, xs.shape[3] - 2
    out = np.zeros((x.shape[0], w.shape[0], rows, columns))
    for a in range(3):
        for b in range(3):
            out += np.einsum("oc,ncij->noij", w[:, :, a, b], xs[:, :, a:a + rows, b:b + columns])
    if bias is not None:
        out += bias.double().numpy()[None, :, None, None]
    return torch.from_numpy(out)


def channels_last(*shape, generator):
    return torch.randn(*shape, generator=generator).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("rows,columns,padding", [(7, 7, (1, 1)), (9, 10, (0, 0)), (5, 6, (1, 0)), (3, 3, (0, 0)),
                                                  (1, 1, (1, 1)), (8, 5, (0, 1))])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("size", [2, 4])
def test_a_winograd_convolution_equals_the_direct_sum(rows, columns, padding, with_bias, size):
    """In output tiles of 2x2 (F(2x2, 3x3)) and of 4x4 (F(4x4, 3x3)), maps smaller than a tile included."""
    generator = torch.Generator().manual_seed(rows * 31 + columns)
    x = channels_last(2, 5, rows, columns, generator=generator)
    weight = torch.randn(4, 5, 3, 3, generator=generator)
    bias = torch.randn(4, generator=generator) if with_bias else None
    u = transformed(weight, size)
    assert u.shape == ((size + 2) ** 2, 5, 4)
    out = convolve(x, u, bias, padding)
    expected = direct(x, weight, bias, padding)
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("size", [2, 4])
def test_bands_of_tile_rows_give_the_whole_map(monkeypatch, size):
    generator = torch.Generator().manual_seed(3)
    x = channels_last(3, 6, 11, 9, generator=generator)
    weight, bias = torch.randn(5, 6, 3, 3, generator=generator), torch.randn(5, generator=generator)
    whole = convolve(x, transformed(weight, size), bias, 1)
    monkeypatch.setattr(winograd, "BAND_BYTES", 1)  # one tile row per band
    banded = convolve(x, transformed(weight, size), bias, 1)
    expected = direct(x, weight, bias, (1, 1))
    for out in (whole, banded):
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("run_bytes", [None, 1, 16 * 5 * 4 * 6])
@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("small_batch_tiles", [0, 10 ** 6])
def test_crops_of_several_sizes_convolved_together_equal_the_direct_sum(monkeypatch, run_bytes, size,
                                                                       small_batch_tiles):
    """Batches of different sizes and paddings in one set of matrix products (or, with run_bytes, in runs of a few
    tiles, or each alone where it is larger than a run), in 2x2 and 4x4 tiles, each batch's tiles transformed apart
    or, as runs of small batches are, the run's together."""
    monkeypatch.setattr(winograd, "SMALL_BATCH_TILES", small_batch_tiles)
    if run_bytes is not None:
        monkeypatch.setattr(winograd, "RUN_BYTES", run_bytes)
        monkeypatch.setattr(winograd, "BAND_BYTES", run_bytes)
    generator = torch.Generator().manual_seed(8)
    weight, bias = torch.randn(4, 5, 3, 3, generator=generator), torch.randn(4, generator=generator)
    sources = [(channels_last(1, 5, 6, 7, generator=generator), (0, 0)),
               (channels_last(2, 5, 5, 5, generator=generator), (1, 1)),
               (channels_last(1, 5, 3, 9, generator=generator), (1, 0)),
               (channels_last(3, 5, 4, 4, generator=generator), (0, 1))]
    outs = convolve_crops(sources, transformed(weight, size), bias)
    assert len(outs) == len(sources)
    for out, (x, padding) in zip(outs, sources):
        expected = direct(x, weight, bias, padding)
        assert out.shape == expected.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("size", [2, 4])
def test_a_run_of_small_batches_is_transformed_in_one_go_with_the_numbers_of_batch_by_batch(monkeypatch, size):
    """A batch transformed apart costs 129 ops in 2x2 tiles and 360 in 4x4, counted at torch's dispatch, whatever
    its size; in a run of small batches (IROF's crops come a row or two to a batch) each adds 35 and 54: its
    padding, the rows of its tiles' transform, the copy into place. The numbers are those of batch by batch, bit
    for bit."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    generator = torch.Generator().manual_seed(21)
    weight, bias = torch.randn(6, 5, 3, 3, generator=generator), torch.randn(6, generator=generator)
    u = transformed(weight, size)
    sources = [(channels_last(1 + k % 2, 5, 4 + k % 5, 5 + k % 3, generator=generator), (k % 2, 0)) for k in range(20)]
    tiles = sum(len(x) * math.prod(winograd._geometry(x, padding, size)[4:]) for x, padding in sources)
    assert tiles < winograd.SMALL_BATCH_TILES * len(sources)  # small batches: transformed as one run by default
    counts, outs = {}, {}
    for name, least in (("together", 10 ** 6), ("apart", 0)):
        monkeypatch.setattr(winograd, "SMALL_BATCH_TILES", least)
        for batches in (sources[:2], sources):
            with Count() as count:
                outs[name] = convolve_crops(batches, u, bias)
            counts.setdefault(name, []).append(count.ops)
    added = {name: (ops[1] - ops[0]) / 18 for name, ops in counts.items()}  # ops per batch
    assert added["together"] * 2 < added["apart"]
    together, apart = outs["together"], outs["apart"]
    for one, other, (x, padding) in zip(together, apart, sources):
        assert one.shape == other.shape and one.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(one, other)  # the same sums in the same order
        expected = direct(x, weight, bias, padding)
        torch.testing.assert_close(one.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_crops_apply_together_by_their_tiles_and_positions_per_row(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    monkeypatch.setattr(winograd, "MIN_POSITIONS", 16)  # on 4 channels; 8 on 8 channels
    monkeypatch.setattr(winograd, "MIN_PRODUCT", 8 * 4 * 4)  # 8 tiles of 4 channels to 4
    weight, wide = torch.zeros(4, 4, 3, 3), torch.zeros(8, 8, 3, 3)
    crop = lambda rows, columns, n=1: torch.zeros(n, 4, rows, columns).contiguous(  # noqa: E731
        memory_format=torch.channels_last)
    with torch.inference_mode():
        assert not applies_crops([(crop(6, 6), (0, 0))], weight, 1, 1, 1)  # 4 tiles alone: too small a product
        assert applies_crops([(crop(6, 6), (0, 0)), (crop(6, 6), (0, 0))], weight, 1, 1, 1)  # 8 together
        # 16 and 4 positions: 10 a row on average, too few on 4 channels; enough on 8 (the same tiles, 4x the product)
        assert not applies_crops([(crop(6, 6, 2), (0, 0)), (crop(4, 4, 2), (0, 0))], weight, 1, 1, 1)
        wider = lambda rows, columns: torch.zeros(2, 8, rows, columns).contiguous(  # noqa: E731
            memory_format=torch.channels_last)
        assert applies_crops([(wider(6, 6), (0, 0)), (wider(4, 4), (0, 0))], wide, 1, 1, 1)
        assert not applies_crops([(wider(6, 6), (0, 0)), (wider(4, 4), (0, 0))], wide, 2, 1, 1)  # strided
        assert not applies_crops([(crop(6, 6), (0, 0)), (crop(6, 6).contiguous(), (0, 0))], weight, 1, 1, 1)
        assert not applies_crops([(crop(6, 6), (0, 0)), (crop(2, 2), (0, 0))], weight, 1, 1, 1)  # an empty output
        assert not applies_crops([], weight, 1, 1, 1)


def test_crops_go_in_4x4_tiles_where_they_are_large_and_fill_the_tiles(monkeypatch):
    crop = lambda rows, columns, channels: torch.zeros(1, channels, rows, columns)  # noqa: E731
    wide, narrower = torch.zeros(512, 512, 3, 3), torch.zeros(256, 256, 3, 3)
    assert large_tiles_pay([(crop(14, 14, 512), (0, 0))], wide)  # 12x12 outputs: 9 whole tiles of 4x4
    assert not large_tiles_pay([(crop(12, 12, 512), (0, 0))], wide)  # 10x10: 9 tiles, 0.81 of 2x2 tiles' work
    assert not large_tiles_pay([(crop(12, 12, 512), (0, 0)), (crop(10, 10, 512), (0, 0))], wide)  # 82 outputs a row
    assert large_tiles_pay([(crop(14, 14, 512), (1, 1)), (crop(12, 14, 512), (0, 0))], wide)
    assert not large_tiles_pay([(crop(14, 14, 256), (0, 0))], narrower)  # 144 outputs a row: 288 needed on 256
    assert large_tiles_pay([(crop(22, 22, 256), (0, 0))], narrower)  # 20x20
    many = winograd.LARGE_CROP_MANY_ROWS  # so many crops read the larger weights once: smaller crops pay
    assert not large_tiles_pay([(crop(10, 10, 512), (0, 0))] * (many - 1), wide)  # 8x8 outputs: 64 a row
    assert large_tiles_pay([(crop(10, 10, 512), (0, 0))] * many, wide)
    assert not large_tiles_pay([(crop(12, 12, 512), (0, 0))] * many, wide)  # 10x10: 0.81 of 2x2 tiles' work still
    assert not large_tiles_pay([(crop(10, 10, 256), (0, 0))] * many, narrower)  # 64 outputs: 128 needed on 256
    monkeypatch.setattr(winograd, "LARGE_CROP_POSITIONS", 1)  # the share of multiply-adds alone
    assert not large_tiles_pay([(crop(11, 11, 512), (0, 0))], wide)  # 9x9 outputs: 9 tiles of 4x4, 0.81 of 2x2's
    assert large_tiles_pay([(crop(10, 10, 512), (0, 0))], wide)  # 8x8: 4 whole tiles, 0.56


def test_only_large_enough_3x3_stride_1_inference_convolutions_of_channels_last_float_maps_apply(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    monkeypatch.setattr(winograd, "MIN_PRODUCT", 4 * 4 * 4)  # 4 tiles (a 4x4 map padded by 1) of 4 channels to 4
    monkeypatch.setattr(winograd, "MIN_POSITIONS", 16)
    x = torch.zeros(1, 4, 4, 4).contiguous(memory_format=torch.channels_last)
    weight = torch.zeros(4, 4, 3, 3)
    same = (1, 1)
    with torch.inference_mode():
        assert applies(x, weight, 1, same, 1, 1)
        assert applies(x, weight, (1, 1), same, (1, 1), 1)
        assert not applies(x, weight, 2, same, 1, 1)  # strided
        assert not applies(x, weight, 1, same, 2, 1)  # dilated
        assert not applies(x, torch.zeros(4, 2, 3, 3), 1, same, 1, 2)  # grouped
        assert not applies(x, torch.zeros(4, 4, 5, 5), 1, same, 1, 1)  # another kernel
        assert not applies(x.contiguous(), weight, 1, same, 1, 1)  # not channels-last
        assert not applies(x.double(), weight.double(), 1, same, 1, 1)
        assert not applies(x, weight, 1, (0, 0), 1, 1)  # a 2x2 map, one tile: too few positions, too small a product
        monkeypatch.setattr(winograd, "MIN_POSITIONS", 1)
        assert not applies(x, weight, 1, (0, 0), 1, 1)  # too small a product
        monkeypatch.setattr(winograd, "MIN_PRODUCT", 1)
        assert applies(x, weight, 1, (0, 0), 1, 1)
        monkeypatch.setattr(winograd, "MIN_POSITIONS", 16)
        assert not applies(x, weight, 1, (0, 0), 1, 1)  # too few positions
        monkeypatch.setattr(winograd, "MIN_PRODUCT", 4 * 4 * 4)
        assert not applies(torch.zeros(1, 2, 4, 4).contiguous(memory_format=torch.channels_last),
                           torch.zeros(4, 2, 3, 3), 1, same, 1, 1)  # too few channels in
        assert not applies(x, torch.zeros(4, 4, 3, 3), 1, same, 1, 1)  # a weight made in inference mode
    assert not applies(x, weight, 1, same, 1, 1)  # gradients recorded


def test_only_wide_enough_convolutions_of_large_maps_go_in_4x4_tiles(monkeypatch):
    monkeypatch.setattr(winograd, "LARGE_MIN_CHANNELS", 4)
    monkeypatch.setattr(winograd, "LARGE_MIN_POSITIONS", 36)  # 6x6 outputs per row
    monkeypatch.setattr(winograd, "MIN_PRODUCT", 8 * 4 * 4)  # 8 tiles of 4 channels to 4
    weight, narrow = torch.zeros(4, 4, 3, 3), torch.zeros(4, 3, 3, 3)
    x = torch.zeros(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)  # 8x8 outputs padded by 1: 2x2 tiles
    same = (1, 1)
    with torch.inference_mode():
        assert applies_large(x, weight, 1, same, 1, 1)
        assert not applies_large(x[:1], weight, 1, same, 1, 1)  # one row: 4 tiles, too small a product
        assert not applies_large(x, weight, 2, same, 1, 1)  # strided
        assert not applies_large(x, weight, 1, same, 2, 1)  # dilated
        assert not applies_large(x.contiguous(), weight, 1, same, 1, 1)  # not channels-last
        assert not applies_large(torch.zeros(1, 3, 8, 8).contiguous(memory_format=torch.channels_last), narrow, 1,
                                 same, 1, 1)  # too few channels in
        assert not applies_large(x[:, :, :5, :5], weight, 1, same, 1, 1)  # 5x5 outputs: too few positions
        monkeypatch.setattr(winograd, "MIN_PRODUCT", 1)
        assert applies_large(x[:1], weight, 1, same, 1, 1)
    assert not applies_large(x, weight, 1, same, 1, 1)  # gradients recorded


def test_a_4x4_transform_is_made_once_the_savings_passed_up_for_it_would_pay_for_it():
    weight = torch.nn.Parameter(torch.randn(8, 8, 3, 3))
    transforms = Transforms()
    cost = winograd.transform_seconds(weight, 4)
    assert cost == pytest.approx(36 * 8 * 8 * 4 / winograd.TRANSFORM_RATE)
    assert not transforms.worth(weight, 4, 0.4 * cost)  # rent: this call's saving would not repay it
    assert not transforms.worth(weight, 4, 0.4 * cost)  # 0.8 of it passed up so far
    assert transforms.worth(weight, 4, 0.4 * cost)  # 1.2: buy
    transforms(weight, 4)
    assert transforms.made(weight, 4) and transforms.worth(weight, 4, 0.0)  # made: always worth using
    assert not transforms.forgone
    other = torch.nn.Parameter(torch.randn(8, 8, 3, 3))
    assert not transforms.worth(other, 4, 0.9 * cost)  # each weight's savings counted apart
    with torch.no_grad():
        weight.add_(1)
    assert not transforms.made(weight, 4)  # changed in place: its transform is out of date
    assert transforms.worth(weight, 4, cost) and not transforms.worth(weight, 2, 0.5 * transform_seconds(weight, 2))


def test_crops_go_in_2x2_tiles_until_the_4x4_transform_pays_for_itself(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    weight = torch.nn.Parameter(torch.randn(512, 512, 3, 3, generator=generator) / 40)
    bias = torch.randn(512, generator=generator)
    sources = [(channels_last(1, 512, 14, 14, generator=generator), (0, 0))]  # 12x12 outputs: large tiles pay
    assert large_tiles_pay(sources, weight)
    transforms = Transforms()
    transforms(weight)  # the 2x2 transform made (a plain pass over the full map made it), the 4x4 not
    saving = winograd.large_tiles_saving(sources, weight, transforms)
    assert 0 < saving < winograd.transform_seconds(weight, 4)
    expected = direct(sources[0][0], weight.detach(), bias, (0, 0))
    calls = 0
    with torch.inference_mode():
        while not transforms.made(weight, 4):
            out = winograd.conv2d_crops(transforms, sources, weight, bias)[0]
            torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-4)
            calls += 1
    needed = math.ceil(winograd.transform_seconds(weight, 4) / saving)
    assert calls == needed  # calls 1 to needed - 1 in 2x2 tiles, the last made the 4x4 transform
    assert not transforms.forgone
    made_first = transforms(weight, 4)
    with torch.inference_mode():
        winograd.conv2d_crops(transforms, sources, weight, bias)
    assert transforms(weight, 4) is made_first


def test_transforms_are_kept_per_tile_size():
    weight = torch.nn.Parameter(torch.randn(4, 4, 3, 3))
    transforms = Transforms()
    small, large = transforms(weight), transforms(weight, 4)
    assert small.shape[0] == 16 and large.shape[0] == 36
    assert transforms(weight) is small and transforms(weight, 4) is large


def test_transforms_are_kept_per_weight_and_made_again_after_an_in_place_change():
    weight = torch.nn.Parameter(torch.randn(4, 4, 3, 3))
    transforms = Transforms()
    first = transforms(weight)
    assert transforms(weight) is first
    with torch.no_grad():
        weight.mul_(2)
    again = transforms(weight)
    assert again is not first
    torch.testing.assert_close(again, 2 * first)


def test_transforms_go_with_their_weights():
    transforms = Transforms()
    for _ in range(3):  # as a parametrization makes its weight anew each pass
        weight = torch.randn(4, 4, 3, 3)
        transforms(weight)
        del weight
    assert len(transforms.entries) == 0


def wide_model(generator):
    """Convolutions of 256 channels (the ones computed by Winograd's method) between narrow ones, with biases."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 256, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(256, 5)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * (2 / parameter[0].numel()) ** 0.5)
    return model


@pytest.mark.parametrize("large_from", [None, 100])
def test_plain_passes_compute_the_wide_convolutions_by_winograd_and_keep_the_numbers(monkeypatch, large_from):
    """In 2x2 tiles, or (large_from: the fewest positions per row in 4x4 tiles, which 12x12 maps have) in 4x4."""
    if large_from is not None:
        monkeypatch.setattr(winograd, "LARGE_MIN_POSITIONS", large_from)
        monkeypatch.setattr(winograd, "MIN_PRODUCT", 1)  # 18 tiles of 256 channels to 256
    generator = torch.Generator().manual_seed(5)
    model = wide_model(generator)
    x = channels_last(2, 3, 12, 12, generator=generator)
    calls = []
    original = winograd.convolve

    def counted(*args):
        calls.append(args[1].shape[0])
        return original(*args)

    with torch.inference_mode():
        expected = model(x)
        winograd.convolve, saved = counted, winograd.convolve
        try:
            with WinogradPasses(Transforms()):
                out = model(x)
        finally:
            winograd.convolve = saved
    assert calls == [16 if large_from is None else 36] * 2  # the two 256-channel convolutions, not the 3-channel one
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("large", [False, True])
def test_incremental_crops_by_winograd_equal_a_plain_pass(monkeypatch, large):
    """The crops in 2x2 tiles, or (large) in 4x4."""
    monkeypatch.setattr(winograd, "MIN_PRODUCT", 1)
    monkeypatch.setattr(winograd, "MIN_POSITIONS", 1)
    monkeypatch.setattr(winograd, "LARGE_CROP_POSITIONS", 1 if large else 10 ** 9)
    monkeypatch.setattr(winograd, "LARGE_CROP_WORK", 10.0)
    monkeypatch.setattr(winograd, "TRANSFORM_RATE", math.inf)  # the 4x4 transform repays itself at once
    generator = torch.Generator().manual_seed(6)
    model = wide_model(generator)
    x = channels_last(2, 3, 16, 16, generator=generator)
    changed = x.clone()
    changed[0, :, 2:5, 3:6] = 0
    changed[1, :, 10:14, 9:12] = 0
    engine = Incremental(model)
    together = []
    convolve_crops = winograd.convolve_crops
    monkeypatch.setattr(winograd, "convolve_crops", lambda sources, u, *rest: together.append((len(sources), len(u)))
                        or convolve_crops(sources, u, *rest))
    with torch.inference_mode():
        engine(x)
        out = engine(changed)
        expected = model(changed)
    assert engine.passes["incremental"] == 1
    assert engine.transforms.entries  # the crops went through Winograd's method
    assert (2, 36 if large else 16) in together  # the rows' boxes differ in size: two batches of crops, one call
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_a_runner_told_no_winograd_runs_torch_convolutions():
    generator = torch.Generator().manual_seed(7)
    model = wide_model(generator)
    x = torch.rand(2, 3, 12, 12, generator=generator)
    relevance = torch.rand(2, 3, 12, 12, generator=generator)
    patch = dict(patch_size=4, steps=3)
    torch_only = evaluate.Runner(model, x, 0, channels_last=True, winograd=False)
    plain = evaluate.region_perturbation(torch_only, x, relevance, **patch)
    fast_runner = evaluate.Runner(model, x, 0, channels_last=True)
    fast = evaluate.region_perturbation(fast_runner, x, relevance, **patch)
    assert torch_only.transforms is None and torch_only.incremental.transforms is None
    assert fast_runner.transforms.entries
    torch.testing.assert_close(fast.curves["morf"], plain.curves["morf"], rtol=1e-5, atol=1e-6)
