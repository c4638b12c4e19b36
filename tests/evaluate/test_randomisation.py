"""Randomisation tests: similarities against scipy/scikit-image, cascading and independent layer randomisation."""
import copy

import numpy as np
import pytest
import torch

from relprop import evaluate
from relprop.evaluate import randomisation, similarity
from .models import small_cnn


def gradient_x_input(model, x, target):
    leaf = x.detach().requires_grad_(True)
    out = model(leaf)
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), leaf)
    return grad * x


def test_spearman_and_ssim_equal_scipy_and_scikit_image():
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("skimage.metrics")
    a, b = torch.randn(2, 9, 10, dtype=torch.float64), torch.randn(2, 9, 10, dtype=torch.float64)
    b[1] = a[1] * 0.5 + b[1] * 0.2
    a[0, :3] = 1.0  # ties
    for n in range(2):
        assert similarity.spearman(a, b)[n].item() == pytest.approx(stats.spearmanr(a[n].flatten(), b[n].flatten())[0])
        data_range = max(a[n].max(), b[n].max()) - min(a[n].min(), b[n].min())
        expected = metrics.structural_similarity(a[n].numpy(), b[n].numpy(), win_size=7, data_range=float(data_range))
        assert similarity.ssim(a, b)[n].item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_model_parameter_randomisation_compares_each_randomised_copy_and_leaves_the_model(mode):
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    kept = copy.deepcopy(model.state_dict())
    result = evaluate.model_parameter_randomisation(model, x, explain=gradient_x_input, mode=mode, seed=5)
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    assert result.parameters["layers"] == ["3", "0"]  # from the output towards the input
    target = model(x).argmax(1)
    original = gradient_x_input(model, x, target).sum(1).abs()
    generator = torch.Generator().manual_seed(5)
    randomised = copy.deepcopy(model)
    for j, name in enumerate(["3", "0"]):
        if mode == "independent":
            randomised = copy.deepcopy(model)
        randomisation._randomise(dict(randomised.named_modules())[name], generator)
        assert not torch.equal(dict(randomised.named_modules())[name].weight, dict(model.named_modules())[name].weight)
        changed = gradient_x_input(randomised, x, target).sum(1).abs()
        for n in range(2):
            ranks_a = np.argsort(np.argsort(original[n].detach().flatten().numpy()))
            ranks_b = np.argsort(np.argsort(changed[n].detach().flatten().numpy()))
            assert result.details["per_layer"][n, j].item() == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1])
    assert torch.allclose(result.scores, result.details["per_layer"].mean(1))


def test_randomisation_takes_the_original_relevance_instead_of_explaining_it_again():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = model(x).argmax(1)
    calls = []

    def explain(m, inputs, t):
        calls.append(1)
        return gradient_x_input(m, inputs, t)

    again = evaluate.model_parameter_randomisation(model, x, target, explain, seed=2)
    given = evaluate.model_parameter_randomisation(model, x, target, explain, seed=2,
                                                   original=gradient_x_input(model, x, target))
    assert len(calls) == (1 + 2) + 2  # the second call explains the two randomised models only
    assert torch.equal(again.details["per_layer"], given.details["per_layer"])
    with pytest.raises(ValueError, match="not like x"):
        evaluate.model_parameter_randomisation(model, x, target, explain, original=torch.ones(2, 8, 8))


def test_randomisation_without_change_gives_similarity_one():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    constant = lambda m, inputs, target: inputs.abs()  # noqa: E731  # ignores the model entirely
    for name in ["spearman", "ssim", "top_k"]:
        result = evaluate.model_parameter_randomisation(model, x, explain=constant, similarity=name, k=10)
        assert torch.allclose(result.scores, torch.ones(2, dtype=torch.float64))


def test_random_logit_explains_another_class_than_the_target():
    model = small_cnn()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    seen = []

    def explain(m, inputs, target):
        seen.append(target.clone())
        return gradient_x_input(m, inputs, target)

    result = evaluate.random_logit(model, x, target=1, explain=explain, similarity="spearman")
    assert torch.equal(seen[0], torch.ones(4, dtype=torch.long)) and bool((seen[1] != 1).all())
    assert torch.equal(result.details["other_class"].long(), seen[1])
    a, b = gradient_x_input(model, x, seen[0]).sum(1), gradient_x_input(model, x, seen[1]).sum(1)
    assert torch.allclose(result.scores, similarity.spearman(a, b))


def test_randomisation_by_blocks_randomises_each_top_level_block_whole_from_the_output_down():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                                    torch.nn.Conv2d(4, 4, 3, padding=1)),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    seen = []

    def explain(m, inputs, target):
        seen.append(copy.deepcopy(m.state_dict()))
        return gradient_x_input(m, inputs, target)

    result = evaluate.model_parameter_randomisation(model, x, 0, explain, layers="blocks", seed=1)
    assert result.parameters["layers"] == ["2", "0"] and result.details["per_layer"].shape == (2, 2)
    assert len(seen) == 1 + 2  # the original, then one explanation per block instead of one per layer (3)
    original, after_head, after_all = seen
    changed = lambda state: {k for k in original if not torch.equal(original[k], state[k])}  # noqa: E731
    assert changed(after_head) == {"2.weight", "2.bias"}
    assert changed(after_all) == set(original)  # both convolutions of block 0 at once, the head still random
    with pytest.raises(ValueError, match='layers must be None .* "blocks" or a list of names'):
        evaluate.model_parameter_randomisation(model, x, 0, explain, layers="all")
