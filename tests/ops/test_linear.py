"""Linear-like ops (ops/linear.py): the transposes its rules apply, batch-norm merging of weights, rules on a
convolution whose input is known to be non-negative, average pooling as a linear map, and DeepLift of a convolution
over many baselines, against references written here from the formulas (explicit weight matrices, float64, non-zero
biases)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import rules
from relprop.attribution import DeepLiftShap
from relprop.composites import Composite
from relprop.ops import linear


@pytest.mark.parametrize("dims, transposed, options", [
    (1, False, dict(stride=2, padding=1, dilation=2, groups=2)),
    (2, False, dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=1)),
    (2, False, dict(stride=1, padding="same", dilation=2, groups=2)),
    (3, False, dict(stride=1, padding=1, dilation=1, groups=1)),
    (2, True, dict(stride=2, padding=1, dilation=1, groups=2, output_padding=1)),
])
def test_the_transpose_of_a_convolution_map_is_the_vector_jacobian_product_of_the_convolution(dims, transposed,
                                                                                                options):
    lmap = linear.conv_map(dims, transposed, **options)
    x = torch.randn((2, 4) + (7,) * dims, dtype=torch.float64, requires_grad=True)
    weight_shape = (4, 6 // options["groups"]) if transposed else (6, 4 // options["groups"])
    weight = torch.randn(weight_shape + (3,) * dims, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    out = lmap.forward(x, weight, bias)
    v = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, v)  # W^T v by autograd; the bias does not enter it
    torch.testing.assert_close(lmap.transpose(v, weight, x.detach()), expected, rtol=1e-12, atol=1e-12)
    assert lmap.out_channel_dim == (1 if transposed else 0)


@pytest.mark.parametrize("channels, options", [
    (3, dict(stride=1, padding=1, dilation=1)),  # an image's layer: one matrix product over unfolded windows
    (3, dict(stride=1, padding=(2, 0), dilation=2)),
    (3, dict(stride=2, padding=3, dilation=1)),  # strided: torch's own kernel
    (8, dict(stride=1, padding=1, dilation=1)),  # many channels: torch's own kernel
])
def test_a_rules_terms_through_a_convolution_map_equal_the_convolution_and_their_transpose_its_gradient(channels,
                                                                                                       options):
    lmap = linear.conv_map(2, False, **options)
    x = torch.randn(2, channels, 9, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, channels, 3, 3, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    out = F.conv2d(x, weight, bias, **options)
    torch.testing.assert_close(lmap.terms(x.detach(), weight, bias), out.detach(), rtol=1e-12, atol=1e-12)
    v = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, v)
    torch.testing.assert_close(lmap.transpose(v, weight, x.detach()), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride, size", [(1, (7, 6)), (2, (7, 6)), ((2, 3), (8, 7)), (2, (1, 1))])
def test_the_transpose_of_a_pointwise_convolution_is_its_gradient_at_every_stride(stride, size):
    lmap = linear.conv_map(2, False, stride=stride, padding=0)
    x = torch.randn((3, 4) + size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, 1, 1, dtype=torch.float64)
    out = F.conv2d(x, weight, torch.randn(6, dtype=torch.float64), stride=stride)
    v = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, v)  # zero on the input positions a strided 1x1 window skips
    torch.testing.assert_close(lmap.transpose(v, weight, x.detach()), expected, rtol=1e-12, atol=1e-12)
    v_leaf = v.clone().requires_grad_(True)  # differentiable: relevance's own gradient flows through it
    (through,) = torch.autograd.grad(lmap.transpose(v_leaf, weight, x.detach()).sum(), v_leaf)
    torch.testing.assert_close(through, F.conv2d(torch.ones_like(x), weight, stride=stride).detach(), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("stride, size", [(1, (7, 6)), (2, (7, 6)), ((2, 3), (8, 7)), (2, (1, 1))])
def test_a_pointwise_convolution_transposed_by_its_flipped_weight_is_its_gradient_at_every_stride(stride, size):
    lmap = linear.conv_map(2, False, stride=stride, padding=0)
    x = torch.randn((3, 4) + size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, 1, 1, dtype=torch.float64)
    out = F.conv2d(x, weight, None, stride=stride)
    v = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, v)
    flipped = linear._flip(weight)
    assert flipped.shape == (4, 6, 1, 1) and flipped.is_contiguous()
    torch.testing.assert_close(lmap.flipped_transpose(v, flipped, x.detach()), expected, rtol=1e-12, atol=1e-12)


def test_only_unpadded_ungrouped_two_dimensional_convolutions_have_a_flipped_transpose():
    assert linear.conv_map(2, False, stride=2).flipped_transpose is not None
    assert linear.conv_map(2, False, padding=1).flipped_transpose is None
    assert linear.conv_map(2, False, groups=2).flipped_transpose is None
    assert linear.conv_map(2, False, padding="same").flipped_transpose is None
    assert linear.conv_map(1, False).flipped_transpose is None
    assert linear.conv_map(2, True).flipped_transpose is None
    assert linear.dense_map().flipped_transpose is None


def test_scaling_the_output_channels_of_a_grouped_transposed_convolution_scales_its_output_channels():
    lmap = linear.conv_map(2, True, stride=2, groups=2)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    weight = torch.randn(4, 3, 2, 2, dtype=torch.float64)  # 2 groups of 2 inputs -> 3 outputs: 6 output channels
    scale = torch.linspace(0.5, 3.0, 6, dtype=torch.float64)
    scaled = lmap.forward(x, linear.scale_output_channels(weight, scale, lmap), None)
    torch.testing.assert_close(scaled, lmap.forward(x, weight, None) * scale.view(1, 6, 1, 1), rtol=1e-12, atol=1e-12)


def test_merged_parameters_of_a_layer_and_a_following_affine_map_compute_the_layer_then_the_map():
    lmap = linear.dense_map()
    x = torch.randn(3, 4, dtype=torch.float64)
    weight, bias = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    scale, shift = torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)
    merged_weight, merged_bias = linear.merged_parameters(weight, bias, (scale, shift), lmap)
    torch.testing.assert_close(x @ merged_weight.T + merged_bias, (x @ weight.T + bias) * scale + shift, rtol=1e-12,
                               atol=1e-12)


def explicit(conv, shape):
    """The convolution as a matrix M (outputs x inputs) and a bias per output, from its answers to unit inputs."""
    size = int(np.prod(shape))
    with torch.no_grad():
        bias = conv(torch.zeros((1,) + shape, dtype=torch.float64)).flatten()
        columns = conv(torch.eye(size, dtype=torch.float64).view((size,) + shape)).flatten(1) - bias
    return columns.T.numpy(), bias.numpy()


def gamma_reference(M, b, a, R, gamma):
    """Signed LRP-gamma on a >= 0: an output of z > 0 uses w + gamma w+ (b + gamma b+), one of z < 0 w + gamma w-."""
    z = M @ a + b
    up = np.where(z[:, None] > 0, M + gamma * np.clip(M, 0, None), M + gamma * np.clip(M, None, 0))
    up_bias = np.where(z > 0, b + gamma * np.clip(b, 0, None), b + gamma * np.clip(b, None, 0))
    return a * (up.T @ (R / (up @ a + up_bias)))


def alpha_beta_reference(M, b, a, R, alpha, beta):
    """LRP-alpha-beta on a >= 0: positive and negative parts (each bias in its sign's part) normalised apart; a part
    that is empty (a window of zeros after the ReLU and a bias of the other sign) passes nothing."""
    Mp, Mn, bp, bn = np.clip(M, 0, None), np.clip(M, None, 0), np.clip(b, 0, None), np.clip(b, None, 0)

    def share(part, part_bias):
        denominator = part @ a + part_bias
        return part.T @ np.divide(R, denominator, out=np.zeros_like(R), where=denominator != 0)

    return a * (alpha * share(Mp, bp) - beta * share(Mn, bn))


@pytest.mark.parametrize("rule, reference", [
    (rules.Gamma(0.25, stabilizer=0.0), lambda M, b, a, R: gamma_reference(M, b, a, R, 0.25)),
    (rules.AlphaBeta(2, 1, stabilizer=0.0), lambda M, b, a, R: alpha_beta_reference(M, b, a, R, 2, 1)),
])
def test_rules_on_a_convolution_after_a_relu_equal_their_formula_and_the_same_input_given_directly(rule, reference):
    torch.manual_seed(13)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.5, -0.4, 0.3], dtype=torch.float64))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    R = torch.randn(1, 3, 3, 3, dtype=torch.float64)  # the output relevance, of both signs
    composite = Composite(layer_map={"conv": rule})
    after_relu = relprop.explain(nn.Sequential(nn.ReLU(), conv), x, target=R, composite=composite).relevance
    direct = relprop.explain(conv, F.relu(x), target=R, composite=composite).relevance
    M, b = explicit(conv, (2, 5, 5))
    expected = reference(M, b, F.relu(x).flatten().numpy(), R.flatten().numpy())
    np.testing.assert_allclose(after_relu.flatten().numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(direct.flatten().numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", ["convolution", "convolution and batch norm", "dense"])
def test_stabilized_gamma_on_outputs_of_both_signs_equals_its_formula_on_every_call(layer, monkeypatch):
    # After a ReLU, on a layer whose outputs of both signs carry relevance, with kept weights and an eps: the path
    # that runs on the denominators' magnitudes (five output-sized passes) must give the formula's relevance, the
    # denominators stabilized away from zero by eps in z's sign, on the first call and on one with kept weights.
    torch.manual_seed(21)
    gamma, eps = 0.25, 0.05
    if layer == "dense":
        linear_layer, shape = nn.Linear(6, 3).double(), (6,)
    else:
        linear_layer, shape = nn.Conv2d(2, 3, 3, stride=2, padding=1).double(), (2, 5, 5)
    layers = [nn.ReLU(), linear_layer]
    if layer == "convolution and batch norm":
        norm = nn.BatchNorm2d(3).double().eval()
        with torch.no_grad():
            norm.weight.copy_(torch.tensor([1.5, -0.7, 0.9], dtype=torch.float64))
            norm.bias.copy_(torch.tensor([-0.2, 0.3, 0.1], dtype=torch.float64))
            norm.running_mean.copy_(torch.tensor([0.1, -0.3, 0.2], dtype=torch.float64))
            norm.running_var.copy_(torch.tensor([0.5, 2.0, 1.2], dtype=torch.float64))
        layers.append(norm)
    with torch.no_grad():
        linear_layer.bias.copy_(torch.tensor([0.5, -0.4, 0.3], dtype=torch.float64))
    model = nn.Sequential(*layers).eval()
    x = torch.randn((1,) + shape, dtype=torch.float64)
    R = model(torch.randn((1,) + shape, dtype=torch.float64)).detach()  # the output relevance, of both signs
    used = []
    original = linear._gamma_by_magnitude
    monkeypatch.setattr(linear, "_gamma_by_magnitude", lambda *args: used.append(1) or original(*args))
    rule = rules.Gamma(gamma, stabilizer=eps)
    lrp = relprop.LRP(model, Composite(layer_map={"conv": rule, "linear": rule}))
    first, second = lrp(x, R).relevance, lrp(x, R).relevance
    assert len(used) == 2
    M, b = explicit(model[1:], shape)  # with the batch norm merged into the convolution's weights and bias
    a = F.relu(x).flatten().numpy()
    z = M @ a + b
    assert (z > 0).any() and (z < 0).any()  # both halves of the rule are exercised
    up = np.where(z[:, None] > 0, M + gamma * np.clip(M, 0, None), M + gamma * np.clip(M, None, 0))
    up_bias = np.where(z > 0, b + gamma * np.clip(b, 0, None), b + gamma * np.clip(b, None, 0))
    denominator = up @ a + up_bias + eps * np.where(z > 0, 1.0, -1.0)
    expected = a * (up.T @ (R.flatten().numpy() / denominator))
    np.testing.assert_allclose(first.flatten().numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(second.flatten().numpy(), expected, rtol=1e-9, atol=1e-12)


def test_average_pooling_under_a_layer_rule_is_the_linear_map_with_one_over_the_window_size_per_input():
    pool = nn.AvgPool2d(2, stride=1)
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    R = torch.randn(1, 1, 2, 3, dtype=torch.float64)
    eps = 0.5
    relevance = relprop.explain(pool, x, target=R, composite=Composite(layer_map={"avg_pool": rules.Epsilon(eps)}))
    expected = np.zeros((3, 4))
    for i in range(2):
        for j in range(3):
            window = x[0, 0, i:i + 2, j:j + 2].numpy()
            z = window.mean()
            expected[i:i + 2, j:j + 2] += window / 4 * R[0, 0, i, j].item() / (z + eps * np.sign(z))
    np.testing.assert_allclose(relevance.relevance[0, 0].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_deeplift_of_a_convolution_against_several_baselines_is_the_mean_of_weight_times_difference():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    baselines = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    relevance = DeepLiftShap(model, baselines)(x, target=1).relevance
    # the model is linear: its gradient g is the same everywhere, and DeepLift gives (x - b) g for each baseline
    probe = torch.zeros(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(model(probe)[0, 1], probe)
    expected = torch.stack([((row - baselines) * g).mean(0) for row in x])
    torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("composite", ["epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus_flat"])
def test_large_outputs_explained_in_chunks_of_samples_give_the_relevance_of_the_whole_batch(composite, monkeypatch):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.Conv2d(6, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        model[3].running_mean.normal_()
    x = torch.randn(3, 3, 8, 8)
    whole = relprop.LRP(model, composite)(x, 1).relevance
    monkeypatch.setattr(linear, "_CHUNK_BYTES", 64)  # every layer in chunks: 3 samples, one per chunk
    chunked = relprop.LRP(model, composite)(x, 1).relevance
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


def test_gamma_after_a_relu_passes_nothing_from_an_output_whose_stabilized_denominator_is_zero():
    # One output channel with no weights and bias -eps: z = -eps, and w + gamma w+ with b + gamma b+ adds nothing, so
    # the denominator plus eps is exactly 0 there; the ReLU after it gives that output no relevance, and no 0 / 0.
    torch.manual_seed(5)
    eps = 2.0 ** -20
    conv = nn.Conv2d(2, 2, 3)
    with torch.no_grad():
        conv.weight[1].zero_()
        conv.bias.copy_(torch.tensor([0.5, -eps]))
    model = nn.Sequential(nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    composite = Composite(layer_map={"conv": rules.Gamma(0.25, stabilizer=eps), "linear": rules.Epsilon(1e-6)})
    relevance = relprop.LRP(model, composite)(torch.rand(1, 2, 5, 5), 0).relevance
    assert torch.isfinite(relevance).all()
