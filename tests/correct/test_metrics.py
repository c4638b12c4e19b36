import numpy as np
import pytest
import torch

from relprop import correct

from . import planted


class Linear(torch.nn.Module):
    """logits = W x.flatten(): every measure has a closed form."""

    def __init__(self, weight):
        super().__init__()
        self.layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.layer.weight.data = weight

    def forward(self, x):
        return self.layer(x.flatten(1))


def test_artifact_relevance_is_the_positive_share_inside_the_mask():
    rng = np.random.default_rng(0)
    relevance = rng.normal(size=(4, 3, 5, 5))
    mask = np.zeros((5, 5))
    mask[3:, 3:] = 1
    maps = relevance.sum(1).clip(0, None)
    expected = (maps * mask).sum((1, 2)) / maps.sum((1, 2))
    np.testing.assert_allclose(correct.artifact_relevance(torch.tensor(relevance), torch.tensor(mask)).numpy(),
                               expected, rtol=1e-6)
    assert float(correct.artifact_relevance(-torch.ones(1, 1, 5, 5), torch.tensor(mask))[0]) == 0.0  # no NaN


def test_sensitivity_accuracy_and_poisoned_accuracy_of_a_linear_model_follow_their_formulas():
    weight = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 3.0]])  # pixel 3 (the artifact) pushes class 1
    model = Linear(weight)
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.5, 0.0, 0.0, 0.0]]).reshape(3, 1, 2, 2)
    mask = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    marked = correct.paste(x, 1.0, mask)
    torch.testing.assert_close(marked.flatten(1)[:, 3], torch.ones(3))
    torch.testing.assert_close(correct.artifact_sensitivity(model, x, marked, 1), torch.full((3,), 3.0))
    labels = torch.tensor([0, 1, 0])
    assert correct.accuracy(model, x, labels) == pytest.approx(1.0)
    # the class-0 samples with the artifact: logits (2, 4) and (1.5, 3): both called class 1
    assert correct.poisoned_accuracy(model, x, labels, 1.0, mask, 1) == pytest.approx(0.0)


def test_tcav_score_counts_samples_whose_target_grows_along_the_cav():
    net = planted.trained()
    images, labels, marked = planted.generate(200, 3)
    cav = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    x, y = planted.unmarked(40, 9)
    derivative = correct.directional_derivative(net, x, cav, 1)
    # the same derivative by finite differences along the CAV at the layer
    step = 1e-2
    hook = correct.cav.layer_module(net, planted.LAYER).register_forward_hook(
        lambda module, inputs, output: output + step * cav.spread(output))
    with torch.no_grad():
        moved = net(x)[:, 1]
    hook.remove()
    with torch.no_grad():
        plain = net(x)[:, 1]
    torch.testing.assert_close(derivative, (moved - plain) / step, rtol=0.05, atol=0.05)
    assert correct.tcav_score(net, x, cav, 1) == pytest.approx(float((derivative > 1e-6).float().mean()))
    assert correct.tcav_score(net, x, cav, 1) > 0.9  # the artifact's direction raises class 1
    assert correct.tcav_score(correct.p_clarc(net, cav), x, cav, 1) == 0.0  # nothing left along it


def test_measuring_a_model_in_training_mode_leaves_its_batch_norm_statistics_and_mode_as_they_were():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).train()
    before = {key: value.clone() for key, value in net.state_dict().items()}
    x = torch.randn(16, 1, 8, 8)
    cav = correct.from_inputs(net, x[:8] + 1, x[8:], "2")
    correct.accuracy(net, x, torch.zeros(16, dtype=torch.long))
    correct.tcav_score(net, x, cav, 0)
    assert net.training and net[1].training
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])
