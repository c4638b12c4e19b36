"""Incremental forward passes equal plain ones, compute only the changed region, and fall back where they cannot."""
import copy

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from relprop.engine.incremental import Incremental
from tests.models import CNN1d, CNN3d, TinyResNet, UNet, with_biases


class Windows(nn.Sequential):
    """Every window geometry the engine follows: stride, dilation, 'same' padding, groups, ceil_mode, avg-pool."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=3), nn.GELU(),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.Conv2d(6, 8, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2), nn.Dropout(0.5),
            nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(), nn.Linear(72, 4))


class Dense(nn.Module):
    """DenseNet-style: features concatenated along channels, a bias added by a broadcast tensor."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(7, 4, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(11, 1, 1))
        self.head = nn.Linear(11, 3)

    def forward(self, x):
        x = torch.cat([x, torch.relu(self.a(x))], 1)
        x = torch.cat([x, self.b(x)], 1) + self.shift
        return self.head(x.mean((2, 3)))


def models():
    torch.manual_seed(0)
    return {
        "windows": (with_biases(Windows()).eval(), (2, 3, 24, 24)),
        "resnet": (with_biases(TinyResNet()).eval(), (3, 3, 16, 16)),
        "unet": (with_biases(UNet()).eval(), (2, 3, 16, 16)),
        "dense": (with_biases(Dense()).eval(), (2, 3, 12, 12)),
        "cnn1d": (with_biases(CNN1d()).eval(), (3, 2, 32)),
        "cnn3d": (with_biases(CNN3d()).eval(), (2, 1, 8, 8, 8)),
    }


def patched(x, step, size=3):
    """x with one more patch per row set to zero (row r's patch at a place of its own)."""
    out = x.clone()
    for row in range(len(x)):
        start = [(step * 5 + row * 3 + 2 * d) % (extent - size + 1) for d, extent in enumerate(x.shape[2:])]
        out[(row, slice(None)) + tuple(slice(s, s + size) for s in start)] = 0
    return out


def checked_chain(model, x, steps):
    """An Incremental after kept passes of x with one more patch each (patched), each output checked against a plain
    forward pass."""
    incremental = Incremental(model)
    for step in range(steps):
        x = patched(x, step)
        with torch.inference_mode():
            expected = model(x)
        torch.testing.assert_close(incremental(x), expected, rtol=1e-5, atol=1e-6)
    return incremental


@pytest.mark.parametrize("name", list(models()))
def test_a_chain_of_patches_gives_a_plain_forward_pass_outputs(name):
    model, shape = models()[name]
    incremental = checked_chain(model, torch.rand(shape), 4)
    assert incremental.passes == {"full": 1, "incremental": 3}


@pytest.mark.parametrize("name", list(models()))
def test_copies_of_one_base_leave_the_base_as_it_was(name):
    model, shape = models()[name]
    x = torch.rand(shape)
    incremental = Incremental(model)
    incremental(x)
    for step in range(3):
        copy = patched(x, step)
        with torch.inference_mode():
            expected = model(copy)
        torch.testing.assert_close(incremental(copy, keep=False), expected, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(incremental(x.clone(), keep=False), expected, rtol=1e-5, atol=1e-6)
    assert incremental.passes["incremental"] == 4


class Convolutions(TorchFunctionMode):
    """Records the input and weight of every 2-D convolution that runs."""

    def __init__(self):
        super().__init__()
        self.calls, self.paddings = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "conv2d":
            self.calls.append((args[0], args[1] if len(args) > 1 else kwargs["weight"]))
            self.paddings.append(kwargs.get("padding", args[4] if len(args) > 4 else 0))
        return func(*args, **kwargs)

    @property
    def shapes(self):
        """Each convolution's input shape."""
        return [tuple(x.shape) for x, _ in self.calls]

    @property
    def layouts(self):
        """Whether each convolution's input and weight are channels-last (and not also contiguous)."""
        return [tuple(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in call)
                for call in self.calls]


def test_only_the_receptive_field_of_the_change_is_computed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
                          nn.Linear(4 * 32 * 32, 2)).eval()
    x = torch.rand(2, 3, 32, 32)
    incremental = Incremental(model)
    incremental(x)
    copy = x.clone()
    copy[1, :, 10:12, 20:22] = 0  # row 0 unchanged
    with Convolutions() as seen:
        out = incremental(copy)
    # the first conv's 4x4 outputs around the 2x2 patch need a 6x6 input crop, the second's 6x6 an 8x8 crop of row 1
    assert seen.shapes == [(1, 3, 6, 6), (1, 4, 8, 8)]
    with torch.inference_mode():
        torch.testing.assert_close(out, model(copy))


def test_a_change_over_most_of_the_input_runs_in_full():
    model, shape = models()["resnet"]
    x = torch.rand(shape)
    incremental = Incremental(model)
    incremental(x)
    incremental(x + 1)
    assert incremental.passes == {"full": 2, "incremental": 0}


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        if x[:, :, 0, 0].sum() > 0:  # other ops on other data
            x = x.exp()
        return x.flatten(1)


class WritesAndReads(nn.Module):
    """Reads a tensor, writes into it without taking the result, then reads it again: the write cannot run in place
    (the first read saw the values before it), and an out-of-place run would read stale values."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        doubled = x * 2
        x.relu_()
        return (x + doubled).flatten(1)


class ReadsAfterInPlace(nn.Module):
    """Writes into a tensor without taking the result, then reads it: nothing read it before, so the engine runs the
    write in place, as the model does, and follows the model."""

    def __init__(self):
        super().__init__()
        self.conv, self.second = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        x.relu_()
        return self.second(x).flatten(1)


class Cropping(nn.Module):
    """The same ops on differently shaped tensors, depending on the data."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        x = self.first(x)
        x = x[..., :6] if x[:, :, 0, 0].sum() > 0 else x
        return self.second(x).mean((2, 3))


@pytest.mark.parametrize("model", [Branching(), Cropping(), WritesAndReads()],
                         ids=["branching", "cropping", "writes_in_place"])
def test_models_it_cannot_follow_still_get_plain_forward_outputs(model):
    torch.manual_seed(0)
    model.eval()
    x = torch.rand(1, 1, 8, 8) - 0.5
    incremental = Incremental(model)
    for value in (5.0, -5.0, 5.0):
        copy = x.clone()
        copy[..., :1, :1] = value
        with torch.inference_mode():
            expected = model(copy)
        torch.testing.assert_close(incremental(copy), expected)
    if isinstance(model, WritesAndReads):
        assert not incremental.followable and incremental.passes["incremental"] == 0
    else:  # the branch differs between the passes: each change of branch is found and run in full
        assert incremental.passes == {"full": 3, "incremental": 0}


def test_an_in_place_relu_on_an_output_nothing_read_before_runs_in_place_and_is_followed():
    torch.manual_seed(0)
    model = with_biases(ReadsAfterInPlace()).eval()
    incremental = checked_chain(model, torch.rand(2, 1, 12, 12) - 0.5, 3)
    assert incremental.followable and incremental.passes == {"full": 1, "incremental": 2}
    relu, conv = incremental.kept[1][1], incremental.kept[0][1]
    assert relu is conv  # the ReLU's kept output is the convolution's buffer, written in place


def test_a_kept_pass_keeps_in_place_relus_in_their_input_s_buffer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()
    x = torch.rand(2, 3, 8, 8)
    incremental = Incremental(model)
    incremental(x)
    outputs = [output for _, output in incremental.kept if output is not None]
    assert len(outputs) == 4 and outputs[0] is outputs[1] and outputs[2] is not outputs[3]
    assert incremental.kept_bytes() == 3 * 2 * 4 * 8 * 8 * 4  # the out-of-place ReLU has a buffer of its own
    with torch.inference_mode():
        assert torch.equal(outputs[0], torch.relu(model[0](x)))


class Residual(nn.Module):
    """A convolution only its batch norm reads, summed with a pointwise convolution of the input, whose boxes lie
    inside the 3x3 branch's; with ``wide`` set, the sum takes a 7x7 convolution instead, whose boxes are wider;
    ``in_place``: the sum written into the branch, as torchvision's ResNet blocks do."""

    def __init__(self, in_place=False):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.identity, self.wider = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 7, padding=3)
        self.head = nn.Linear(4, 2)
        self.wide, self.in_place = False, in_place

    def forward(self, x):
        branch = self.norm(self.conv(x))
        identity, wider = self.identity(x), self.wider(x)
        if self.in_place:
            branch += wider if self.wide else identity
            return self.head(torch.relu(branch).mean((2, 3)))
        return self.head(torch.relu(branch + (wider if self.wide else identity)).mean((2, 3)))


def residual_chain(steps, in_place=False):
    """A Residual model, its input after ``steps`` patches, and an Incremental that ran them (checked_chain)."""
    torch.manual_seed(0)
    model = with_biases(Residual(in_place)).eval()
    x = torch.rand(2, 3, 16, 16)
    incremental = checked_chain(model, x, steps)
    for step in range(steps):
        x = patched(x, step)
    return model, x, incremental


def test_an_output_every_reader_takes_as_computed_is_not_written_and_the_outputs_stay_plain():
    model, x, incremental = residual_chain(3)
    assert incremental.passes == {"full": 1, "incremental": 2}
    conv, norm = incremental.kept[0][1], incremental.kept[1][1]
    with torch.inference_mode():
        assert not torch.allclose(conv, model.conv(x))  # the batch norm took its boxes; the first pass's values
        assert not torch.allclose(norm, model.norm(model.conv(x)))  # the sum took them: the identity's lie inside
        identity = incremental.kept[2][1]
        torch.testing.assert_close(identity, model.identity(x))  # the sum read it around its boxes: written
    assert {id(conv), id(norm)} <= set(incremental.stale)


def test_a_later_pass_that_reads_an_output_left_unwritten_runs_in_full():
    model, x, incremental = residual_chain(2)
    model.wide = True  # the sum now reads the branch around its boxes, where the kept values are outdated
    x = patched(x, 2)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(incremental(x), expected, rtol=1e-5, atol=1e-6)
    assert incremental.passes == {"full": 2, "incremental": 1} and not incremental.stale
    x = patched(x, 3)  # the full pass is the new base: the next pass runs incrementally again
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(incremental(x), expected, rtol=1e-5, atol=1e-6)
    assert incremental.passes == {"full": 2, "incremental": 2}


class Concatenations(TorchFunctionMode):
    """Counts the concatenations that run."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") == "cat"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wide", [False, True], ids=["identity_inside", "wider_later"])
def test_a_sum_written_into_its_branch_adds_the_identity_row_by_row_into_the_branch_s_boxes(wide):
    model, x, incremental = residual_chain(2, in_place=True)
    x = patched(x, 2)
    with Concatenations() as seen:
        out = incremental(x)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
    assert seen.count == 0  # the identity's rows added into the branch's batch: no batch of crops
    assert id(incremental.kept[1][1]) in incremental.stale  # the branch's kept output: never written
    model.wide = wide  # a later sum reading the branch around its boxes runs in full
    x = patched(x, 3)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(incremental(x), expected, rtol=1e-5, atol=1e-6)
    assert incremental.passes == ({"full": 2, "incremental": 2} if wide else {"full": 1, "incremental": 3})


def test_strided_convolutions_on_crops_run_without_onednn_and_give_plain_outputs():
    nnpack = torch._C._get_nnpack_enabled()
    torch.manual_seed(0)
    model = with_biases(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1, stride=2),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))).eval()
    x = torch.rand(2, 3, 16, 16)
    incremental = Incremental(model)
    incremental(x)
    copy = patched(x, 0)
    with Onednn() as seen:  # entered first, it sees the calls the engine makes, on crops
        out = incremental(copy)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(copy), rtol=1e-5, atol=1e-6)
    assert sorted(set(seen.calls)) == [(1, True), (2, False)]
    assert torch._C._get_mkldnn_enabled() and torch._C._get_nnpack_enabled() == nnpack


class Onednn(TorchFunctionMode):
    """Records each convolution's stride and whether torch's oneDNN convolutions were on for it (calls), and its
    rows, stride and whether NNPACK was on (rows)."""

    def __init__(self):
        super().__init__()
        self.calls, self.paddings, self.rows = [], [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "conv2d":
            stride = kwargs.get("stride", args[3] if len(args) > 3 else 1)
            stride = stride[0] if isinstance(stride, (tuple, list)) else stride
            self.calls.append((stride, torch._C._get_mkldnn_enabled()))
            self.rows.append((len(args[0]), stride, torch._C._get_nnpack_enabled()))
        return func(*args, **kwargs)


def test_crops_at_the_border_run_in_one_batch_padded_as_the_op_pads():
    torch.manual_seed(0)
    model = with_biases(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))).eval()
    x = torch.rand(3, 3, 16, 16)
    incremental = Incremental(model)
    incremental(x)
    copy = x.clone()
    copy[0, :, 0:2, 7:9] = 0  # at the top border: a 3x4 box in the first layer's output, 4x6 in the second's
    copy[1, :, 0:2, 3:5] = 0  # the same sizes elsewhere on the border; row 2 unchanged
    with Convolutions() as seen:
        out = incremental(copy, keep=False)
    # each layer's two crops in one batch, a row of zero padding above them
    assert seen.shapes == [(2, 3, 5, 6), (2, 4, 6, 8)]
    with torch.inference_mode():
        torch.testing.assert_close(out, model(copy), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(incremental(x.clone(), keep=False), model(x), rtol=1e-5, atol=1e-6)


def test_crops_over_a_whole_map_run_with_the_op_s_own_padding_and_give_plain_outputs():
    torch.manual_seed(0)
    model = with_biases(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 4, 3, padding=(1, 2), dilation=(1, 2)), nn.Flatten(),
                                      nn.Linear(4 * 6 * 6, 2))).eval()
    x = torch.rand(3, 3, 6, 6)
    incremental = Incremental(model)
    incremental(x)
    copy = x.clone()
    copy[0, :, 2:4, 2:4] = 0  # the first layer's output changes in rows and columns 1-4, the second's everywhere
    copy[1, :, 2:4, 2:4] = 1
    with Convolutions() as seen:
        out = incremental(copy, keep=False)
    # the first layer's crop needs no padding; the others cover their whole input, which the op pads (no padded copy)
    assert seen.shapes == [(2, 3, 6, 6), (2, 4, 6, 6), (2, 4, 6, 6)]
    assert [tuple(padding) if padding else 0 for padding in seen.paddings] == [0, (1, 1), (1, 2)]
    with torch.inference_mode():
        torch.testing.assert_close(out, model(copy), rtol=1e-5, atol=1e-6)
    copy[0, :, 0:2, 2:4] = 0.5  # row 0 reaches the top border: a row of padding above only, written out
    with Convolutions() as seen:
        out = incremental(copy, keep=False)
    assert (seen.shapes[0], seen.paddings[0]) == ((1, 3, 7, 6), 0)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(copy), rtol=1e-5, atol=1e-6)


def test_convolutions_run_their_crops_channels_last_and_a_weight_changed_in_place_is_copied_again():
    torch.manual_seed(0)
    model = with_biases(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Flatten(),
                                      nn.Linear(4 * 8 * 8, 2))).eval()
    x = torch.rand(2, 3, 16, 16)
    incremental = Incremental(model)
    incremental(x)
    copy = x.clone()
    copy[0, :, 4:6, 4:6] = 0
    with Convolutions() as seen:
        out = incremental(copy, keep=False)
    assert seen.layouts == [(True, True), (True, True)]  # the strided one too, without oneDNN (see _window)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(copy), rtol=1e-5, atol=1e-6)
        model[0].weight.mul_(2)
        incremental = Incremental(model)
        incremental(x)
        torch.testing.assert_close(incremental(copy, keep=False), model(copy), rtol=1e-5, atol=1e-6)


class ViewsActivations(nn.Module):
    """Calls .view on an activation, which a channels-last batch cannot take."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        z = torch.relu(self.conv(x))
        return self.head(z.view(len(z), -1))


def test_an_image_model_in_eval_mode_keeps_its_outputs_channels_last_and_gives_plain_outputs():
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).eval()
    incremental = checked_chain(model, torch.rand(3, 3, 16, 16), 3)
    kept = [out for _, out in incremental.kept if out is not None and out.dim() == 4]
    assert kept and all(out.is_contiguous(memory_format=torch.channels_last) for out in kept)
    assert incremental.base_input.is_contiguous()  # the input as given, to compare the next one with


def test_a_model_that_cannot_take_a_channels_last_batch_runs_as_given_with_plain_outputs():
    torch.manual_seed(0)
    model = with_biases(ViewsActivations()).eval()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))
    incremental = checked_chain(model, x, 3)
    assert not incremental.channels_last and incremental.passes == {"full": 1, "incremental": 2}
    assert all(out.is_contiguous() for _, out in incremental.kept if out is not None)


def test_a_model_in_training_mode_keeps_its_outputs_as_it_makes_them():
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).eval()
    model.stem.train()  # one module in training mode is enough: its random or batch-wise ops follow memory order
    incremental = Incremental(model)
    with torch.inference_mode():
        incremental(torch.rand(3, 3, 16, 16))
    assert incremental.channels_last and all(out.is_contiguous() for _, out in incremental.kept if out is not None)


def test_a_weight_written_through_data_between_two_evaluations_is_not_taken_from_the_first_ones_copy():
    # .data writes leave the version counter as it was: channels-last copies kept beyond one Incremental (they were
    # kept per weight for the process) handed the second evaluation the old weight, 0.018 off the model's output
    torch.manual_seed(0)
    model = with_biases(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                      nn.Flatten(), nn.Linear(4 * 16 * 16, 2))).eval()
    x = torch.rand(2, 3, 16, 16)
    copy = x.clone()
    copy[0, :, 4:6, 4:6] = 0
    first = Incremental(model)
    first(x)
    first(copy, keep=False)
    model[2].weight.data.mul_(2)
    second = Incremental(model)
    second(x)
    with Convolutions() as seen:
        out = second(copy, keep=False)
    assert (True, True) in seen.layouts  # the crops ran channels-last, from a copy
    with torch.inference_mode():
        torch.testing.assert_close(out, model(copy), rtol=1e-5, atol=1e-6)


def test_training_mode_batch_norm_and_dropout_run_in_full_as_in_a_plain_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.3), nn.Conv2d(4, 4, 3),
                          nn.Flatten()).train()
    twin = copy.deepcopy(model)
    x = torch.rand(2, 3, 12, 12)
    incremental = Incremental(model)
    for step in range(3):
        x = patched(x, step)
        torch.manual_seed(step)
        out = incremental(x)
        torch.manual_seed(step)
        with torch.inference_mode():
            torch.testing.assert_close(out, twin(x))
    torch.testing.assert_close(model[1].running_mean, twin[1].running_mean)
    torch.testing.assert_close(model[1].running_var, twin[1].running_var)


def test_neither_the_model_nor_the_input_is_changed():
    model, shape = models()["resnet"]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.rand(shape)
    before = x.clone()
    incremental = Incremental(model)
    incremental(x)
    copy = patched(x, 0)
    incremental(copy)
    incremental(patched(copy, 1), keep=False)
    assert torch.equal(x, before)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
    assert not model.training


def test_a_base_larger_than_max_bytes_is_not_kept_and_passes_run_in_full():
    model, shape = models()["resnet"]
    x = torch.rand(shape)
    incremental = Incremental(model)
    incremental(x)
    assert incremental.row_bytes > 0 and incremental.kept
    small = Incremental(model, max_bytes=incremental.row_bytes * len(x) - 1)
    small(x)
    copy = patched(x, 0)
    with torch.inference_mode():
        torch.testing.assert_close(small(copy), model(copy))
    assert small.kept == [] and small.passes == {"full": 2, "incremental": 0}


TORCHVISION = ["resnet18", "densenet121", "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v3_small",
               "efficientnet_b0", "regnet_y_400mf", "convnext_tiny", "googlenet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_architectures_give_plain_outputs_in_chains_and_copies(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    options = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = with_biases(getattr(torchvision.models, name)(weights=None, **options)).eval()
    x = torch.rand(2, 3, 64, 64)
    incremental = Incremental(model)
    incremental(x)
    for step in range(2):
        x = patched(x, step, size=6)
        copy = x.clone()
        copy[:, :, 20:26, 30:36] = 0.5
        with torch.inference_mode():
            expected, expected_copy = model(x), model(copy)
        scale = expected.abs().max()
        torch.testing.assert_close(incremental(x), expected, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(incremental(copy, keep=False), expected_copy, rtol=0, atol=1e-5 * scale)
    assert incremental.passes == {"full": 1, "incremental": 4}


def test_a_checkpoint_brings_the_base_back_after_later_passes():
    model, shape = models()["windows"]
    x = torch.rand(shape)
    incremental = Incremental(model)
    incremental(x)
    incremental.checkpoint()
    kept = [output.clone() for _, output in incremental.kept if output is not None]
    moved = patched(patched(x, 0), 1)
    incremental(moved)
    assert incremental.rollback()
    assert all(torch.equal(a, b) for a, b in zip(kept, [o for _, o in incremental.kept if o is not None]))
    copy = patched(x, 2)
    with torch.inference_mode():
        torch.testing.assert_close(incremental(copy), model(copy), rtol=1e-5, atol=1e-6)
    assert incremental.rollback()  # the pass after the rollback wrote into outputs saved already
    with torch.inference_mode():
        torch.testing.assert_close(incremental(x.clone()), model(x), rtol=1e-5, atol=1e-6)
    incremental.reset()
    assert not incremental.rollback()
    assert incremental.passes == {"full": 1, "incremental": 3}


class Cores:
    """Stands in for engine.cores.FreeCores: this many cores free, whatever the machine does."""

    def __init__(self, free):
        self.free, self.looks = free, 0

    def look(self):
        self.looks += 1
        return self.free

    def threads(self, most):
        self.looks += 1
        return max(1, min(most, self.free))


@pytest.fixture
def switches(monkeypatch):
    """torch set to two threads for the test (then back), and the counts it is set to from the first pass on."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    plain_set = torch.set_num_threads
    try:
        yield seen, lambda: monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n) or plain_set(n))
    finally:
        plain_set(threads)


def windows_on_free_cores(free):
    model, shape = models()["windows"]
    x = torch.rand(shape)
    incremental = Incremental(model)
    incremental.cores = Cores(free=free)
    incremental(x)
    return model, x, incremental


def test_incremental_passes_on_a_busy_machine_run_crops_on_one_thread_whole_ops_on_all_and_give_the_count_back(
        switches):
    seen, watch = switches
    model, x, incremental = windows_on_free_cores(1)  # another process holds the second core
    watch()
    moved = patched(x, 0)
    with torch.inference_mode():
        torch.testing.assert_close(incremental(moved), model(moved), rtol=1e-5, atol=1e-6)
    assert incremental.passes["incremental"] == 1
    assert seen[0] == 1 and seen[-1] == 2  # the pass starts on one thread and gives the count back at its end
    assert 2 in seen[1:-1]  # the ops after the flatten run whole, with both threads
    assert all(a != b for a, b in zip(seen, seen[1:]))  # each switch changes the count: no idle calls
    assert torch.get_num_threads() == 2
    seen.clear()
    incremental.reset()
    incremental(x)  # a full pass (a new base) runs as torch is set
    assert 1 not in seen and torch.get_num_threads() == 2


def test_incremental_passes_run_their_crops_on_the_cores_other_processes_leave_free(switches):
    seen, watch = switches
    model, x, incremental = windows_on_free_cores(2)
    looks = incremental.cores.looks
    watch()
    moved = patched(x, 0)
    with torch.inference_mode():
        torch.testing.assert_close(incremental(moved), model(moved), rtol=1e-5, atol=1e-6)
    assert incremental.passes["incremental"] == 1
    assert incremental.cores.looks == looks + 1  # one look a pass
    assert seen == []  # crops and whole ops alike on torch's two threads: never switched
    torch.set_num_threads(4)
    seen.clear()
    with torch.inference_mode():
        torch.testing.assert_close(incremental(patched(x, 1)), model(patched(x, 1)), rtol=1e-5, atol=1e-6)
    assert seen[0] == 2 and seen[-1] == 4  # the crops on the two free cores, the whole ops on torch's four


@pytest.mark.parametrize("name", ["windows", "resnet", "unet", "dense"])
def test_the_meta_estimate_of_a_step_is_the_share_a_real_incremental_pass_computes(name):
    from relprop.engine.incremental import changed_boxes, step_share

    model, shape = models()[name]
    x = torch.randn(shape)
    step = patched(x, 0)
    engine = Incremental(model)
    engine(x)
    engine(step)
    boxes = changed_boxes(step, x)
    computed, plain = engine.work
    # the estimate reads one row: rows whose boxes have the same size and place compute alike
    one_row = Incremental(model)
    one_row(x[:1])
    one_row(step[:1])
    assert step_share(model, x, boxes) == pytest.approx(one_row.work[0] / one_row.work[1], rel=1e-12)
    assert 0 < step_share(model, x, boxes) <= 1 and computed < plain
    assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))  # the model is untouched


def test_the_meta_estimate_counts_the_ops_a_step_runs_per_multiply_add_of_a_plain_pass_of_one_row():
    from relprop.engine.incremental import changed_boxes, step_ops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 2)).eval()
    x = torch.rand(3, 3, 8, 8)
    plain = 8 * 8 * 4 * 27 + 8 * 8 * 4 * 36 + 2 * 256  # one row's multiply-adds: two convolutions, a linear layer
    assert step_ops(model, x, changed_boxes(patched(x, 0), x)) == pytest.approx(5 / plain, rel=1e-12)


def test_the_meta_estimate_keeps_the_user_s_forward_hooks_out_and_puts_them_back():
    from relprop.engine.incremental import changed_boxes, step_share

    model, shape = models()["resnet"]
    seen = []
    handles = [module.register_forward_hook(lambda module, args, out: seen.append(out.device.type))
               for module in model.modules() if isinstance(module, nn.Conv2d)]
    handles.append(model.register_forward_pre_hook(lambda module, args: seen.append("pre")))
    x = torch.randn(shape)
    step = patched(x, 0)
    assert step_share(model, x, changed_boxes(step, x)) is not None and seen == []  # the estimate ran unseen
    model(x)
    assert seen[0] == "pre" and set(seen[1:]) == {"cpu"} and len(seen) == len(handles)  # and they are back
    for handle in handles:
        handle.remove()


def test_no_meta_estimate_for_a_model_whose_control_flow_reads_the_data():
    from relprop.engine.incremental import step_share

    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if bool(x.sum() > 0) else -self.conv(x)

    x = torch.randn(2, 3, 8, 8)
    assert step_share(Branching(), x, [((1, 3), (1, 3)), None]) is None


class Recorder(TorchFunctionMode):
    """The number of rows each linear layer is called with."""

    def __init__(self):
        super().__init__()
        self.linear_rows = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear:
            self.linear_rows.append(len(args[0]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(models()))
def test_steps_give_each_step_a_plain_pass_output_with_the_full_tail_run_once(name):
    model, shape = models()[name]
    x = torch.rand(shape)
    incremental = Incremental(model)
    incremental(x)
    chain = []
    for step in range(4):
        x = patched(x, step)
        chain.append(x)
    with torch.inference_mode():
        expected = [model(batch) for batch in chain]
    with Recorder() as recorder:
        outputs = incremental.steps(chain)
    for output, plain in zip(outputs, expected):
        torch.testing.assert_close(output, plain, rtol=1e-5, atol=1e-6)
    assert incremental.passes == {"full": 1, "incremental": 4}
    if recorder.linear_rows:  # the layers from the cut on ran once, on the 4 steps' rows
        assert recorder.linear_rows == [4 * shape[0]] * len(recorder.linear_rows)
    # the base is the last step's: a later pass goes on from it
    x = patched(x, 4)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(incremental(x), expected, rtol=1e-5, atol=1e-6)


class TwoHeads(nn.Module):
    """Returns a convolution's map beside the class scores, and reads a value of an early map after the linear layer:
    what the layers after the cut read of the layers before it is kept, and a value read of anything else stops
    the stacked pass (a plain pass runs instead)."""

    def __init__(self, read_value=False):
        super().__init__()
        self.conv, self.pool, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Linear(16, 3)
        self.read_value = read_value

    def forward(self, x):
        early = torch.relu(self.conv(x))
        scores = self.head(self.pool(early).flatten(1))
        if self.read_value and early.argmax() < 0:  # never true, but a value read of a map no op after the cut reads
            scores = scores * 2
        return (scores,) if self.read_value else (scores, early)


@pytest.mark.parametrize("read_value", [False, True], ids=["kept", "value_read"])
def test_steps_keep_what_the_rest_of_the_model_reads_of_the_layers_before_the_cut(read_value):
    torch.manual_seed(0)
    model = with_biases(TwoHeads(read_value)).eval()
    x = torch.rand(2, 3, 12, 12)
    incremental = Incremental(model)
    incremental(x)
    chain = [x := patched(x, step) for step in range(3)]
    with torch.inference_mode():
        expected = [model(batch) for batch in chain]
    with Recorder() as recorder:
        outputs = incremental.steps(chain)
    for output, plain in zip(outputs, expected):
        torch.testing.assert_close(output, plain, rtol=1e-5, atol=1e-6)
    # the linear layer ran once on the 3 steps' rows; after a value read of an empty stand-in, once more, plainly
    assert recorder.linear_rows == ([6, 6] if read_value else [6])


def test_steps_stack_no_more_rows_after_the_cut_than_max_tail_bytes_allows():
    model, shape = models()["windows"]
    x = torch.rand(shape)
    incremental = Incremental(model)
    incremental(x)
    incremental.max_tail_bytes = 0  # one step at a time: each step's linear layer on its own rows
    chain = [x := patched(x, step) for step in range(3)]
    with torch.inference_mode():
        expected = [model(batch) for batch in chain]
    with Recorder() as recorder:
        outputs = incremental.steps(chain)
    for output, plain in zip(outputs, expected):
        torch.testing.assert_close(output, plain, rtol=1e-5, atol=1e-6)
    assert recorder.linear_rows == [shape[0]] * 3


class Clones(TorchFunctionMode):
    """The bytes of every clone made while inside (the engine's copies of what its passes overwrite among them)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.clone:
            self.bytes += out.numel() * out.element_size()
        return out


def test_a_checkpoint_copies_at_most_the_base_however_many_steps_overwrite_it():
    model, shape = models()["windows"]
    x = torch.rand(shape)
    chain = [x := patched(x, step) for step in range(1, 31)]  # 30 steps: their boxes cover the base many times over
    copied = {}
    for checkpoint in (False, True):
        incremental = Incremental(model)
        incremental(chain[0])
        if checkpoint:
            incremental.checkpoint()
            kept = [output.clone() for _, output in incremental.kept if output is not None]
        with Clones() as clones:
            outputs = incremental.steps(chain[1:])  # the stacked path: each step's pass stops at its cut
        copied[checkpoint] = clones.bytes
    with torch.inference_mode():
        for output, batch in zip(outputs, chain[1:]):
            torch.testing.assert_close(output, model(batch), rtol=1e-5, atol=1e-6)
    # what the checkpoint added: each kept output at most once, whole (a log of every box overwritten held 3x that)
    assert 0 < copied[True] - copied[False] <= incremental.kept_bytes()
    assert incremental.rollback()
    assert all(torch.equal(a, b) for a, b in zip(kept, [o for _, o in incremental.kept if o is not None]))
    copy = patched(chain[0], 40)
    with torch.inference_mode():
        torch.testing.assert_close(incremental(copy), model(copy), rtol=1e-5, atol=1e-6)
    assert incremental.rollback()  # the copies serve every later rollback
    with torch.inference_mode():
        torch.testing.assert_close(incremental(chain[1]), model(chain[1]), rtol=1e-5, atol=1e-6)
    assert incremental.passes == {"full": 1, "incremental": 31}
