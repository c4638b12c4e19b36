import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import Deconvolution as CaptumDeconvolution
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import Saliency

import relprop
from relprop.attribution import (Deconvnet, ExcitationBackprop, Gradient, GradientXInput, GuidedBackprop,
                                 IntegratedGradients, SmoothGrad)

from .models import SharedReLUNet, captum, close, randomize, vgg_style


def plain_gradient(model, x, target):
    leaf = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(leaf)[:, target].sum(), leaf)[0]


class FunctionalMLP(nn.Module):
    """Three dense layers; the same functional ReLU after the first two."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(12, 10), nn.Linear(10, 8), nn.Linear(8, 3)])
        randomize(self)

    def forward(self, x):
        x = F.relu(self.layers[0](x))
        x = torch.relu(self.layers[1](x))
        return self.layers[2](x)


# ---- Gradient, GradientXInput ------------------------------------------------------------------------------------
def test_gradient_is_the_plain_gradient_for_every_kind_of_target(image):
    model = vgg_style()
    explanation = Gradient(model)(image, target=[0, 3, 1])
    expected = torch.stack([plain_gradient(model, image[i:i + 1], t)[0] for i, t in enumerate([0, 3, 1])])
    close(explanation.relevance, expected)
    assert torch.isnan(explanation.delta).all()
    assert explanation.target.tolist() == [0, 3, 1]
    weights = torch.randn(3, 5)
    by_tensor = Gradient(model)(image, target=model(image).detach() * weights)
    by_callable = Gradient(model)(image, target=lambda output: output * weights)
    leaf = image.clone().requires_grad_(True)
    (weighted,) = torch.autograd.grad((model(leaf) * weights).sum(), leaf)
    close(by_tensor.relevance, weighted)
    close(by_callable.relevance, weighted)


def test_gradient_x_input_conserves_on_a_bias_free_relu_network(image):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 3, bias=False))
    explanation = GradientXInput(model)(image, target=2)
    close(explanation.relevance, image * plain_gradient(model, image, 2))
    close(explanation.explained, model(image)[:, 2].detach())
    assert explanation.delta.abs().max() < 1e-5 * explanation.explained.abs().max()


# ---- SmoothGrad --------------------------------------------------------------------------------------------------
def noisy_inputs(x, noise_level, n_samples, seed):
    """The noisy copies SmoothGrad promises: x + noise_level * (max - min) of each sample * N(0, 1), copy by copy."""
    generator = torch.Generator().manual_seed(seed)
    spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).reshape(-1, 1, 1, 1)
    return [x + noise_level * spread * torch.randn(x.shape, generator=generator) for _ in range(n_samples)]


def test_smoothgrad_averages_captums_saliency_over_the_noisy_copies(image):
    model = vgg_style()
    explanation = SmoothGrad(model, noise_level=0.2, n_samples=6, seed=3)(image, target=[1, 2, 0])
    saliency = Saliency(model)
    expected = sum(captum(saliency, copy, target=[1, 2, 0], abs=False)
                   for copy in noisy_inputs(image, 0.2, 6, 3)) / 6
    close(explanation.relevance, expected)
    assert torch.isnan(explanation.delta).all()


def test_smoothgrad_is_reproducible_in_any_batch_size_and_leaves_the_global_generator_alone(image):
    model = vgg_style()
    state = torch.get_rng_state()
    whole = SmoothGrad(model, n_samples=5, seed=7)(image, target=1)
    assert torch.equal(torch.get_rng_state(), state)
    for size in (2, 4):
        close(SmoothGrad(model, n_samples=5, seed=7, batch_size=size)(image, target=1).relevance, whole.relevance)
    close(SmoothGrad(model, noise_level=0.0, n_samples=2)(image, 1).relevance, Gradient(model)(image, 1).relevance)


def test_smoothgrad_with_a_composite_averages_lrp_relevance(image):
    model = vgg_style()
    explanation = SmoothGrad(model, noise_level=0.1, n_samples=3, seed=0, composite="epsilon")(image, target=4)
    lrp = relprop.LRP(model, "epsilon")
    runs = [lrp(copy, 4) for copy in noisy_inputs(image, 0.1, 3, 0)]
    close(explanation.relevance, sum(run.relevance for run in runs) / 3)
    close(explanation.delta, sum(run.delta for run in runs) / 3, explanation.explained.abs().max())


# ---- IntegratedGradients -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_middle", "riemann_right"])
def test_integrated_gradients_match_captum(image, method):
    model = vgg_style()
    baseline = 0.3 * torch.randn_like(image)
    ours = IntegratedGradients(model, baseline=baseline, steps=12, method=method)(image, target=[0, 1, 2])
    theirs, delta = captum(CaptumIntegratedGradients(model), image, baseline, target=[0, 1, 2], n_steps=12,
                           method=method, return_convergence_delta=True)
    close(ours.relevance, theirs)
    close(ours.delta, -delta, theirs.abs().max())


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_quadratures_are_exact_when_the_gradient_is_linear_along_the_path(method):
    # (captum's riemann_trapezoid weights sum to (steps - 1) / steps, so it is off by that factor; ours sum to 1)
    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 3)

        def forward(self, x):
            return self.linear(x) ** 2

    model = randomize(Quadratic())
    x = torch.randn(4, 6)
    explanation = IntegratedGradients(model, baseline=torch.randn(6), steps=5, method=method)(x, target=1)
    assert explanation.delta.abs().max() < 1e-5 * explanation.explained.abs().max()


def test_integrated_gradients_are_the_same_in_any_batch_size(image):
    model = vgg_style()
    whole = IntegratedGradients(model, steps=7)(image, target=1)
    for size in (4, 10):
        close(IntegratedGradients(model, steps=7, batch_size=size)(image, target=1).relevance, whole.relevance)


def test_integrated_gradients_complete_on_a_network_with_a_shared_relu(image):
    model = SharedReLUNet()
    explanation = IntegratedGradients(model, steps=64, baseline=0.1)(image)
    with torch.no_grad():
        change = model(image) - model(torch.full_like(image, 0.1))
    close(explanation.explained, change[range(3), explanation.target])
    assert explanation.delta.abs().max() < 0.02 * explanation.explained.abs().max()


@pytest.mark.slow
def test_integrated_gradients_complete_on_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    explanation = IntegratedGradients(model, steps=128)(x)
    assert explanation.delta.abs().max() < 0.05 * explanation.explained.abs().max()


def test_integrated_gradients_with_a_composite_integrate_lrps_modified_gradient(image):
    model = vgg_style()
    explanation = IntegratedGradients(model, steps=3, method="riemann_right", composite="epsilon_plus")(image, 2)
    lrp = relprop.LRP(model, "epsilon_plus")
    average = sum(lrp(image * alpha, 2).gradient for alpha in (1 / 3, 2 / 3, 1.0)) / 3
    close(explanation.relevance, image * average)
    assert explanation.delta.shape == (3,)


# ---- GuidedBackprop, Deconvnet -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ours, theirs", [(GuidedBackprop, CaptumGuidedBackprop), (Deconvnet, CaptumDeconvolution)])
def test_modified_relu_backward_matches_captum(image, ours, theirs):
    model = vgg_style()
    close(ours(model)(image, target=[2, 0, 1]).relevance, captum(theirs(model), image, target=[2, 0, 1]))


def test_modified_relu_backward_reaches_functional_relus():
    model = FunctionalMLP()
    x = torch.randn(4, 12)
    (w1, w2, w3), = [[layer.weight.detach() for layer in model.layers]]
    with torch.no_grad():
        z1 = model.layers[0](x)
        z2 = model.layers[1](z1.relu())
    g2 = w3[1].expand(4, -1)
    guided = ((g2.clamp(min=0) * (z2 > 0)) @ w2).clamp(min=0) * (z1 > 0) @ w1
    deconv = (g2.clamp(min=0) @ w2).clamp(min=0) @ w1
    close(GuidedBackprop(model)(x, target=1).relevance, guided)
    close(Deconvnet(model)(x, target=1).relevance, deconv)


def test_modified_relu_backward_keeps_in_place_effects_and_leaves_nothing_behind(image):
    model = SharedReLUNet()
    explanation = GuidedBackprop(model)(image)
    close(explanation.output, model(image).detach())
    assert torch._C._len_torch_function_stack() == 0


# ---- ExcitationBackprop ------------------------------------------------------------------------------------------
def test_excitation_backprop_gives_marginal_winning_probabilities():
    model = FunctionalMLP()
    x = torch.rand(4, 12)  # excitations are non-negative
    explanation = ExcitationBackprop(model)(x, target=0)
    w1, w2, w3 = (layer.weight.detach().clamp(min=0) for layer in model.layers)
    with torch.no_grad():
        a1 = model.layers[0](x).relu()
        a2 = model.layers[1](a1).relu()

    def share(p, a, w):  # P(child) = sum over parents of a_child w+ / (sum over children of a w+) * P(parent)
        total = a @ w.T
        return a * ((p / torch.where(total == 0, 1, total)) @ w)

    p2 = share(torch.tensor([1.0, 0, 0]).expand(4, 3), a2, w3)
    p1 = share(p2, a1, w2)
    p0 = share(p1, x, w1)
    close(explanation.relevance, p0, 1.0)
    assert (explanation.relevance.sum(1) - 1).abs().max() < 1e-4  # stabilizers keep a little
    assert explanation.target.tolist() == [0, 0, 0, 0]


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_bad_arguments_say_what_to_do(image):
    model = vgg_style()
    with pytest.raises(ValueError, match="steps must be"):
        IntegratedGradients(model, steps=0)
    with pytest.raises(ValueError, match="riemann_trapezoid' needs steps >= 2"):
        IntegratedGradients(model, steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="unknown method 'simpson'; choose one of gausslegendre"):
        IntegratedGradients(model, method="simpson")
    with pytest.raises(ValueError, match=r"baseline has shape \(2, 3, 16, 16\)"):
        IntegratedGradients(model, steps=2)(image, baseline=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="noise_level"):
        SmoothGrad(model, noise_level=-0.1)
    with pytest.raises(ValueError, match="n_samples"):
        SmoothGrad(model, n_samples=0)
    with pytest.raises(ValueError, match="batch_size"):
        SmoothGrad(model, batch_size=0)
    with pytest.raises(TypeError, match="model must be"):
        Gradient(lambda x: x)
    with pytest.raises(TypeError, match="relevance needs a floating-point input"):
        Gradient(model)(image.long())
    with pytest.raises(ValueError, match="unknown composite"):
        SmoothGrad(model, composite="nonsense")
