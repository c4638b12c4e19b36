import itertools
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import DeepLiftShap as CaptumDeepLiftShap

import relprop
from relprop.attribution import DeepLift, DeepLiftShap

from ops.test_custom import Double, Square  # tests/ is on the path (rootdir conftest)
from .models import FunctionalNet, SharedReLUNet, captum, close, randomize, vgg_relu_pool, vgg_style


def secant_reference(model, x, x0, target):
    """DeepLift from the formula for SharedReLUNet: each ReLU becomes multiplication by its secant slope
    (relu(z) - relu(z0)) / (z - z0), so the multipliers are the gradient of that linear network."""
    pre = {}

    def record(z, site):
        pre.setdefault(site, []).append(z.detach())
        return torch.relu(z)

    with torch.no_grad():
        model.reference(x, record)
        model.reference(x0, record)
    slopes = {}
    for site, (z, z0) in pre.items():
        dz = z - z0
        slopes[site] = torch.where(dz == 0, (z > 0).to(z.dtype), (z.relu() - z0.relu()) / torch.where(dz == 0, 1, dz))
    leaf = x.clone().requires_grad_(True)
    out = model.reference(leaf, lambda z, site: slopes[site] * z)
    (multipliers,) = torch.autograd.grad(out[:, target].sum(), leaf)
    return (x - x0) * multipliers


def max_pool_reference(model, x, x0, target):
    """DeepLift from the formula for vgg_relu_pool: ReLU by its secant slope; in each pool window the output change
    y - y0 goes to the maximum of x (if y >= y0) or of x0 (otherwise), scaled by that position's input change."""
    conv, pool, linear = model[0], model[2], model[4]
    with torch.no_grad():
        z, z0 = conv(x), conv(x0)
        a, a0 = z.relu(), z0.relu()
        dz = z - z0
        slope = torch.where(dz == 0, (z > 0).to(z.dtype), (a - a0) / torch.where(dz == 0, 1, dz))
        _, where_x = F.max_pool2d(a, pool.kernel_size, pool.stride, pool.padding, return_indices=True)
        _, where_x0 = F.max_pool2d(a0, pool.kernel_size, pool.stride, pool.padding, return_indices=True)
        flat_a, flat_a0 = a.flatten(2), a0.flatten(2)
        coefficient = torch.zeros(where_x.shape)
        position = torch.zeros(where_x.shape, dtype=torch.long)
        for n, c, i, j in itertools.product(*(range(size) for size in where_x.shape)):
            ix, i0 = where_x[n, c, i, j], where_x0[n, c, i, j]
            y, y0 = flat_a[n, c, ix], flat_a0[n, c, i0]
            winner = ix if y >= y0 else i0
            change = flat_a[n, c, winner] - flat_a0[n, c, winner]
            position[n, c, i, j] = winner
            coefficient[n, c, i, j] = 1.0 if change.abs() < 1e-10 else (y - y0) / change
    leaf = x.clone().requires_grad_(True)
    linearized = (slope * conv(leaf)).flatten(2).gather(2, position.flatten(2)) * coefficient.flatten(2)
    out = linear(linearized.flatten(1))
    (multipliers,) = torch.autograd.grad(out[:, target].sum(), leaf)
    return (x - x0) * multipliers


# ---- against captum, where captum is right -----------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["per-sample", "scalar", "one sample"])
def test_deeplift_matches_captum_on_vgg_style_net(image, baseline):
    model = vgg_style()
    b = {"per-sample": 0.5 * torch.randn_like(image), "scalar": 0.3, "one sample": torch.randn(1, 3, 16, 16)}[baseline]
    ours = DeepLift(model)(image, target=[0, 2, 4], baseline=b)
    theirs, delta = captum(CaptumDeepLift(model), image, b, target=[0, 2, 4], return_convergence_delta=True)
    close(ours.relevance, theirs)
    close(ours.delta, -delta, theirs.abs().max())
    assert ours.delta.abs().max() < 1e-5 * ours.explained.abs().max()


def test_deeplift_without_multiplying_by_inputs_gives_captums_multipliers(image):
    model = vgg_style()
    ours = DeepLift(model, multiply_by_inputs=False)(image, target=1, baseline=0.2)
    theirs = captum(CaptumDeepLift(model, multiply_by_inputs=False), image, 0.2, target=1)
    close(ours.relevance, theirs)
    close(ours.gradient, theirs)


@pytest.mark.parametrize("arity", [1, 2, 3])
def test_custom_attribution_func_gets_multipliers_inputs_and_baselines_like_captum(image, arity):
    model = vgg_style()
    baseline = 0.5 * torch.randn_like(image)
    functions = {1: lambda m: m ** 2, 2: lambda m, x: m * x.abs(), 3: lambda m, x, b: m * (x - b) ** 2}
    ours = DeepLift(model, custom_attribution_func=functions[arity])(image, target=3, baseline=baseline)
    tupled = {1: lambda m: (m[0] ** 2,), 2: lambda m, x: (m[0] * x[0].abs(),),
              3: lambda m, x, b: (m[0] * (x[0] - b[0]) ** 2,)}[arity]
    theirs = captum(CaptumDeepLift(model), image, baseline, target=3, custom_attribution_func=tupled)
    close(ours.relevance, theirs)


def test_deeplift_shap_matches_captum_with_a_delta_per_sample_and_one_per_baseline(image):
    model = vgg_style()
    baselines = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ours = DeepLiftShap(model, baselines)(image, target=[1, 2, 3])
    theirs, delta = captum(CaptumDeepLiftShap(model), image, baselines, target=[1, 2, 3],
                           return_convergence_delta=True)
    close(ours.relevance, theirs)
    pairs = ours.details["delta_per_baseline"]
    assert pairs.shape == (3, 4)
    close(pairs.flatten(), -delta, theirs.abs().max())
    # delta per sample, as for every method: explained - relevance.sum(), the mean of the pairs' residuals
    assert ours.delta.shape == (3,)
    close(ours.delta, ours.explained - ours.relevance.flatten(1).sum(1), theirs.abs().max())
    close(ours.delta, -delta.reshape(3, 4).mean(1), theirs.abs().max())
    assert ours[1].details["delta_per_baseline"].shape == (1, 4)
    with torch.no_grad():
        expected = model(image)[range(3), [1, 2, 3]] - model(baselines)[:, [1, 2, 3]].mean(0)
    close(ours.explained, expected)


def test_deeplift_shap_is_the_same_in_any_batch_size_and_takes_a_callable(image):
    model = vgg_style()
    baselines = torch.randn(5, 3, 16, 16)
    whole = DeepLiftShap(model, baselines)(image, target=0)
    for size in (3, 7):
        chunked = DeepLiftShap(model, lambda x: baselines, batch_size=size)(image, target=0)
        close(chunked.relevance, whole.relevance)
        close(chunked.delta, whole.delta, whole.relevance.abs().max())


# ---- where captum cannot follow: reused modules, functional ops, ReLU straight into max-pool ---------------------
def test_deeplift_follows_the_formula_with_a_shared_relu_module_and_functional_relu(image):
    model = SharedReLUNet()
    baseline = 0.3 * torch.randn_like(image)
    ours = DeepLift(model)(image, target=2, baseline=baseline)
    expected = secant_reference(model, image, baseline, 2)
    close(ours.relevance, expected)
    assert ours.delta.abs().max() < 1e-5 * ours.explained.abs().max()


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1)], ids=["2x2", "overlapping"])
def test_max_pool_hands_the_output_change_to_the_larger_maximum(image, pool):
    model = vgg_relu_pool(pool=pool)
    baseline = torch.randn_like(image)
    ours = DeepLift(model)(image, target=1, baseline=baseline)
    close(ours.relevance, max_pool_reference(model, image, baseline, 1))
    assert ours.delta.abs().max() < 1e-5 * ours.explained.abs().max()


# ---- completeness ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [vgg_style, SharedReLUNet, FunctionalNet])
def test_attributions_add_up_to_the_output_difference(image, make):
    model = make()
    for baseline in (0.0, torch.randn_like(image)):
        explanation = DeepLift(model)(image, baseline=baseline)
        with torch.no_grad():
            change = model(image) - model(torch.zeros_like(image) + baseline)
        close(explanation.explained, change[range(3), explanation.target])
        assert explanation.delta.abs().max() < 1e-5 * explanation.explained.abs().max() + 1e-6


@pytest.mark.slow
def test_attributions_add_up_on_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    for baseline in (0.0, torch.randn_like(x)):
        explanation = DeepLift(model)(x, baseline=baseline)
        assert explanation.delta.abs().max() < 1e-4 * explanation.explained.abs().max()


def test_products_of_activations_split_exactly(image):
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key = nn.Linear(16, 8), nn.Linear(16, 8)

        def forward(self, x):
            tokens = x.flatten(2)  # (N, 3, 256) -> treat channels as tokens over 16 x 16 features
            tokens = tokens.reshape(len(x), 3 * 16, 16)
            scores = self.query(tokens) @ self.key(tokens).transpose(1, 2)
            return (scores * torch.tanh(scores)).mean(2)

    model = randomize(Attention())
    explanation = DeepLift(model)(image, target=0, baseline=0.1)
    assert explanation.delta.abs().max() < 1e-5 * explanation.explained.abs().max()


# ---- behaviour ---------------------------------------------------------------------------------------------------
def test_a_baseline_shared_by_the_batch_runs_as_one_row(image):
    sizes = []
    model = vgg_style()
    handle = model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        shared = DeepLift(model)(image, target=1, baseline=0.2)
        per_sample = DeepLift(model)(image, target=1, baseline=torch.full_like(image, 0.2))
    finally:
        handle.remove()
    assert sizes == [3 + 1, 3 + 3]
    close(shared.relevance, per_sample.relevance)


def test_in_place_ops_keep_their_effect_on_the_model(image):
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = self.conv(x)
            torch.relu_(h)  # result ignored: the model relies on h being modified
            h.sigmoid_()
            return self.fc(h.mean((2, 3)))

    model = randomize(InPlace())
    explanation = DeepLift(model)(image, target=1)
    close(explanation.output, model(image).detach())
    assert explanation.delta.abs().max() < 1e-5 * explanation.explained.abs().max()


def test_nothing_is_left_behind_also_after_an_error(image):
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = vgg_style()

        def forward(self, x):
            out = self.body(x)
            if out.shape[0] > 0:
                raise RuntimeError("boom")
            return out

    model = Failing()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="forward failed.*boom"):  # the model's error, with relprop's advice
        DeepLift(model)(image)
    assert torch._C._len_torch_function_stack() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    DeepLift(model.body)(image)
    assert all(torch.equal(before["body." + k], v) for k, v in model.body.state_dict().items())


def test_ops_no_family_claims_warn_and_still_add_up(image):
    class Unknown(nn.Module):
        def forward(self, x):
            return torch.erfinv(torch.tanh(x) * 0.5)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(768, 6), Unknown(), nn.Linear(6, 3))
    with pytest.warns(relprop.UnsupportedOpWarning, match="erfinv") as caught:
        explanation = DeepLift(model)(image, target=0)
    assert caught[0].filename == __file__  # the model's line, not relprop's
    assert explanation.delta.abs().max() <= 1e-5 * explanation.explained.abs().max()


# ---- nonlinear ops of several inputs: the path-averaged Jacobian ---------------------------------------------------
class SoftmaxDeepLiftModel(nn.Module):
    """The shape of captum's test model of that name (three dense layers, ReLUs, a softmax head), random weights."""

    def __init__(self, num_in=10, num_hidden=15, num_out=5):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(num_in, num_hidden), nn.Linear(num_hidden, num_hidden), nn.Linear(
            num_hidden, num_out)
        self.relu1, self.relu2, self.softmax = nn.ReLU(), nn.ReLU(), nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x))))))


class BasicModel_ConvNet(nn.Module):
    """The shape of captum's test model of that name: two conv/ReLU/max-pool stages, two dense layers, softmax."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, 2, 3, 1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(2, 4, 3, 1), nn.ReLU(), nn.MaxPool2d(2)
        self.fc1, self.relu3, self.fc2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.softmax(self.fc2(self.relu3(self.fc1(x.view(-1, 4)))))


def adds_up(explanation, tolerance=1e-4):
    scale = explanation.explained.abs().max()
    delta = explanation.delta
    assert delta.abs().max() <= tolerance * scale + 1e-7, (float(delta.abs().max()), float(scale))


@pytest.mark.parametrize("make, shape", [(SoftmaxDeepLiftModel, (4, 10)), (BasicModel_ConvNet, (4, 1, 10, 10))])
def test_deeplift_and_deeplift_shap_add_up_on_softmax_headed_models(make, shape):
    torch.manual_seed(0)
    model = randomize(make())
    x = torch.randn(shape) * 2
    adds_up(DeepLift(model)(x, baseline=torch.randn(shape)))
    adds_up(DeepLiftShap(model, torch.randn((3,) + shape[1:]))(x))


def test_path_averaged_softmax_follows_the_integral_of_its_jacobian():
    """On y = softmax(x)[t] alone, DeepLift's multipliers are the mean of the Jacobian from x0 to x: integrated
    gradients with a fine Riemann sum, written here in plain torch."""
    torch.manual_seed(0)
    x, x0 = torch.randn(3, 6) * 3, torch.randn(3, 6)
    model = nn.Softmax(dim=1)
    explanation = DeepLift(model)(x, target=2, baseline=x0)
    steps = 4000
    alphas = (torch.arange(steps) + 0.5) / steps
    path = (x0 + alphas[:, None, None] * (x - x0)).requires_grad_(True)
    (grads,) = torch.autograd.grad(torch.softmax(path, -1)[..., 2].sum(), path)
    torch.testing.assert_close(explanation.relevance, (x - x0) * grads.mean(0), rtol=1e-4, atol=1e-6)
    adds_up(explanation, 1e-6)


def test_layer_norm_division_and_max_over_a_dimension_add_up(image):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(48, 12)
            self.norm = nn.LayerNorm(12)

        def forward(self, x):
            h = self.norm(self.fc(x.mean(1)))
            ratio = h / (h.abs().sum(1, keepdim=True) + 1)
            return torch.log_softmax(ratio.reshape(-1, 3, 4).max(dim=2).values * 3, dim=1)

    torch.manual_seed(0)
    model = randomize(Mixed())
    x = torch.nn.functional.avg_pool2d(image, 4).reshape(3, 3, 16).repeat(1, 1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.UnsupportedOpWarning)  # every op has a rule
        explanation = DeepLift(model)(x, baseline=torch.randn_like(x))
    adds_up(explanation)


def test_fused_attention_adds_up():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 2)

        def forward(self, x):
            q, k, v = self.qkv(x).reshape(x.shape[0], 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(x.shape[0], 5, 8)[:, -1])

    torch.manual_seed(0)
    model = randomize(Attention())
    x = torch.randn(3, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.UnsupportedOpWarning)
        adds_up(DeepLift(model)(x, baseline=torch.randn_like(x)), 1e-5)


def test_explain_logits_explains_the_logits_before_a_softmax_head():
    torch.manual_seed(0)
    model = randomize(SoftmaxDeepLiftModel())
    x, x0 = torch.randn(4, 10), torch.randn(4, 10)
    explanation = DeepLift(model, explain_logits=True)(x, target=1, baseline=x0)
    assert explanation.explained_logits
    logits = model.fc3(model.relu2(model.fc2(model.relu1(model.fc1(torch.cat([x, x0]))))))
    torch.testing.assert_close(explanation.explained, (logits[:4, 1] - logits[4:, 1]).detach())
    torch.testing.assert_close(explanation.output, model(x).detach())
    adds_up(explanation, 1e-5)
    assert not DeepLift(model)(x, target=1, baseline=x0).explained_logits
    with pytest.raises(TypeError, match="explain_logits"):
        DeepLift(model, explain_logits="yes")


def _with_biases(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_((torch.rand(parameter.shape, generator=generator) - 0.5) * 0.2)
    return model.eval()


class Embedded(nn.Module):
    """A language model explained at its input embeddings: the last position's logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, embeddings):
        logits = self.model(inputs_embeds=embeddings).logits
        return logits[:, -1] if logits.dim() == 3 else logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_deeplift_and_deeplift_shap_add_up_on_language_models(family):
    from tests.language_models import language_model

    model = Embedded(_with_biases(language_model(family, "sdpa" if family != "bert" else "eager")))
    embed = model.model.get_input_embeddings()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    x = embed(ids).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.UnsupportedOpWarning)
        adds_up(DeepLift(model)(x, target=1, baseline=0.0))
        adds_up(DeepLiftShap(model, embed(ids.flip(0)).detach())(x, target=1))


def test_deeplift_adds_up_on_a_vision_transformer():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _with_biases(torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                                              hidden_dim=16, mlp_dim=32, num_classes=5))
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.UnsupportedOpWarning)
        adds_up(DeepLift(model)(x, baseline=torch.randn_like(x)))


def test_training_mode_batch_norm_and_dropout_are_refused(image):
    model = SharedReLUNet().train()
    with pytest.raises(ValueError, match="model.eval"):
        DeepLift(model)(image)
    with pytest.raises(ValueError, match="model.eval"):
        DeepLift(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(768, 2)).train())(image)


def test_bad_arguments_say_what_to_do(image):
    model = vgg_style()
    with pytest.raises(ValueError, match="baseline has shape"):
        DeepLift(model)(image, baseline=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        DeepLiftShap(model, torch.zeros(4, 3, 8, 8))(image)
    with pytest.raises(TypeError, match="baselines must be"):
        DeepLiftShap(model, [0.0, 1.0])(image)
    with pytest.raises(ValueError, match="1 to 3 arguments"):
        DeepLift(model, custom_attribution_func=lambda a, b, c, d: a)
    with pytest.raises(ValueError, match="eps"):
        DeepLift(model, eps=-1.0)
    with pytest.raises(ValueError, match="target gives 2 values"):
        DeepLift(model)(image, target=[0, 1])
    class BatchMean(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :4].mean(0, keepdim=True)

    with pytest.raises(ValueError, match="one output per sample"):
        DeepLift(BatchMean())(image)


# ---- custom autograd Functions: DeepLift cannot see inside them ----------------------------------------------------
class _WithFunction(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.function.apply(self.fc1(x)))


def test_a_custom_function_warns_that_deeplift_cannot_see_inside_it():
    torch.manual_seed(0)
    model, x = _WithFunction(Square), torch.randn(3, 5)
    with pytest.warns(relprop.UnsupportedOpWarning, match=r"Square \(custom autograd Function\).*register_function"):
        explanation = DeepLift(model)(x, target=0, baseline=torch.randn(3, 5))
    assert explanation.delta.abs().max() > 1e-3  # its gradient is not a DeepLift multiplier: the warning is needed


def test_a_custom_function_registered_as_linear_adds_up_without_a_warning():
    torch.manual_seed(0)
    model, x = _WithFunction(Double), torch.randn(3, 5)
    relprop.register_function(Double, "gradient")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", relprop.UnsupportedOpWarning)
            explanation = DeepLift(model)(x, target=1, baseline=torch.randn(3, 5))
    finally:
        relprop.register_function(Double, None)
    adds_up(explanation, tolerance=1e-5)


def test_max_pool_asked_for_its_indices_takes_the_winner_rule():
    torch.manual_seed(0)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 3 * 3, 2)

        def forward(self, x):
            values, _ = F.max_pool2d(torch.relu(self.conv(x)), 2, return_indices=True)
            return self.fc(values.flatten(1))

    model, x = randomize(Pooled()), torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.UnsupportedOpWarning)
        adds_up(DeepLift(model)(x, target=0, baseline=torch.randn(2, 1, 8, 8)), tolerance=1e-5)
