"""Faithfulness metrics against references written from the formulas, one sample and one step at a time."""
import math

import numpy as np
import pytest
import torch

from relprop import evaluate
from tests.engine.test_incremental import Clones
from tests.models import TinyResNet, with_biases
from .models import linear_rows, scores, small_cnn


def morf_curve_reference(model, x, relevance_map, target, patch, baseline_value, per_step=1, order="morf"):
    """f(x^(k)) for k = 0..L, removing patches (summed relevance) one group at a time, as numpy loops."""
    n, c, h, w = x.shape
    curves = []
    for i in range(n):
        patches = [(r, q) for r in range(0, h, patch) for q in range(0, w, patch)]
        sums = [relevance_map[i, r:r + patch, q:q + patch].sum() for r, q in patches]
        order_ = sorted(range(len(patches)), key=lambda j: -sums[j] if order == "morf" else sums[j])
        current = x[i].copy()
        curve = [scores(model, current[None], [target[i]])[0]]
        for start in range(0, len(patches), per_step):
            for j in order_[start:start + per_step]:
                r, q = patches[j]
                current[:, r:r + patch, q:q + patch] = baseline_value[i]
            curve.append(scores(model, current[None], [target[i]])[0])
        curves.append(curve)
    return np.array(curves)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_curve_aopc_and_auc_match_the_formula(order):
    model = small_cnn()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    target = [1, 0, 3]
    result = evaluate.region_perturbation(model, x, relevance, target, patch_size=2, order=order, batch_size=5)
    black = x.flatten(1).amin(1).numpy()
    reference = morf_curve_reference(model, x.numpy(), relevance.sum(1).numpy(), target, 2, black, order=order)
    assert torch.allclose(result.curves[order], torch.from_numpy(reference), atol=1e-10)
    aopc = np.mean(reference[:, :1] - reference, axis=1)
    auc = np.array([np.trapezoid(row, dx=1 / (len(row) - 1)) for row in reference])
    assert np.allclose(result.scores.numpy(), aopc) and np.allclose(result.details["auc"].numpy(), auc)


def test_pixel_flipping_removes_several_pixels_per_step_and_stops_after_steps():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    result = evaluate.pixel_flipping(model, x, relevance, 2, regions_per_step=4, steps=5, baseline=0.5)
    reference = morf_curve_reference(model, x.numpy(), relevance.sum(1).numpy(), [2, 2], 1, [0.5, 0.5], per_step=4)
    assert torch.allclose(result.curves["morf"], torch.from_numpy(reference[:, :6]), atol=1e-10)


def test_max_steps_removes_as_many_regions_per_step_as_it_takes_to_cover_them_all():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    coarse = evaluate.region_perturbation(model, x, relevance, 1, patch_size=2, max_steps=5)  # 16 patches: 4 a step
    reference = morf_curve_reference(model, x.numpy(), relevance.sum(1).numpy(), [1, 1], 2, x.flatten(1).amin(1),
                                     per_step=4)
    assert coarse.parameters["regions_per_step"] == 4 and coarse.parameters["steps"] == 4
    assert torch.allclose(coarse.curves["morf"], torch.from_numpy(reference), atol=1e-10)
    fine = evaluate.region_perturbation(model, x, relevance, 1, patch_size=2, max_steps=16)  # enough steps: one each
    assert torch.allclose(fine.curves["morf"], evaluate.region_perturbation(model, x, relevance, 1,
                                                                            patch_size=2).curves["morf"], atol=1e-12)
    chosen = evaluate.selectivity(model, x, relevance, 1, patch_size=2, max_steps=5)
    assert torch.allclose(chosen.scores, coarse.details["auc"], atol=1e-12)
    for wrong in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_steps must be a positive int"):
            evaluate.region_perturbation(model, x, relevance, 1, patch_size=2, max_steps=wrong)


def test_selectivity_is_the_area_under_the_morf_curve_lower_is_better():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    result = evaluate.selectivity(model, x, relevance, 0, patch_size=4)
    reference = morf_curve_reference(model, x.numpy(), relevance.sum(1).numpy(), [0, 0], 4, x.flatten(1).amin(1))
    assert np.allclose(result.scores.numpy(), [np.trapezoid(row, dx=1 / 4) for row in reference])
    assert not result.higher_is_better


def test_region_perturbation_results_do_not_depend_on_batch_size_and_leave_inputs_alone():
    model = small_cnn()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    kept_x, kept_r = x.clone(), relevance.clone()
    parameters = [p.clone() for p in model.parameters()]
    one = evaluate.region_perturbation(model, x, relevance, 1, patch_size=2, baseline="uniform", batch_size=1)
    many = evaluate.region_perturbation(model, x, relevance, 1, patch_size=2, baseline="uniform", batch_size=1000)
    assert torch.allclose(one.curves["morf"], many.curves["morf"], rtol=0, atol=1e-12)  # same copies; only summation order differs
    assert torch.equal(x, kept_x) and torch.equal(relevance, kept_r)
    assert all(torch.equal(a, b) for a, b in zip(parameters, model.parameters()))


def test_patches_run_as_incremental_passes_with_the_curves_of_plain_passes():
    model = small_cnn(size=16)
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    relevance = torch.randn_like(x)
    bands = (torch.arange(16) // 2).view(16, 1).expand(5, 16, 16)  # IROF segments: 8 bands of 2 rows
    curves, passes = {}, {}
    for incremental, batch_size in ((False, 2), (True, 2), (True, 8)):
        runner = evaluate.Runner(model, x, 0, batch_size=batch_size, incremental=incremental)
        curves[incremental, batch_size] = (
            evaluate.region_perturbation(runner, x, relevance, patch_size=2, steps=6).curves["morf"],
            evaluate.irof(runner, x, relevance, segments=bands).curves["morf"])
        passes[batch_size] = runner.incremental.passes if incremental else None
    # batches of 2: 3 groups, each chain starting with a full pass; one batch: the clean pass, still to be made when
    # the first chain starts, is kept as its base, and IROF's chain rolls back to it
    assert passes == {2: {"full": 6, "incremental": 3 * 5 + 3 * 7}, 8: {"full": 1, "incremental": 6 + 8}}
    for key in ((True, 2), (True, 8)):
        for ours, plain in zip(curves[key], curves[False, 2]):
            torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)


def counted_passes(monkeypatch) -> list:
    """A list that gets an item per pass of the incremental engine (a kept pass, or a step: alone, or with others in
    one pass, see engine.together)."""
    from relprop.engine import together
    from relprop.engine.incremental import Incremental

    passes, run, stacked = [], Incremental.__call__, together.together
    monkeypatch.setattr(Incremental, "__call__", lambda self, *a, **k: passes.append(1) or run(self, *a, **k))

    def steps_together(engine, inputs):
        cuts = stacked(engine, inputs)
        passes.extend([1] * len(cuts or ()))
        return cuts

    monkeypatch.setattr(together, "together", steps_together)
    return passes


def test_a_runner_without_chains_makes_one_plain_clean_pass_and_metrics_without_chains_keep_nothing(monkeypatch):
    from relprop.evaluate import runner as runner_module

    monkeypatch.setattr(runner_module, "OP_COST", 0.0)  # a model this small runs chains in plain passes otherwise
    engine_passes = counted_passes(monkeypatch)
    model = small_cnn(size=16)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    runner = evaluate.Runner(model, x, 0, batch_size=8)
    assert runner.incremental.base_input is None and runner.incremental.kept == [] and engine_passes == []
    evaluate.pixel_flipping(model, x, torch.randn_like(x), 0, regions_per_step=64, steps=3)
    evaluate.faithfulness_estimate(model, x, torch.randn_like(x), 0, features_in_step=64)
    assert engine_passes == []  # single locations spread over the image: no kept pass, no activation copy
    evaluate.region_perturbation(model, x, torch.randn_like(x), 0, patch_size=4, steps=3)
    assert len(engine_passes) == 1 + 3  # the clean pass, kept as the base of the chain, and one pass per step


def test_a_metric_s_own_runner_keeps_no_checkpoint_and_a_shared_one_does(monkeypatch):
    from relprop.engine.incremental import Incremental
    from relprop.evaluate import runner as runner_module

    monkeypatch.setattr(runner_module, "OP_COST", 0.0)  # a model this small runs chains in plain passes otherwise
    checkpoints, engine_passes = [], counted_passes(monkeypatch)
    take = Incremental.checkpoint
    monkeypatch.setattr(Incremental, "checkpoint", lambda self: checkpoints.append(1) or take(self))
    model = small_cnn(size=16)
    x, relevance = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    own = evaluate.region_perturbation(model, x, relevance, 0, patch_size=4, steps=3)
    assert len(engine_passes) == 1 + 3  # the chain ran through the engine
    assert checkpoints == []  # one chain on a runner nothing else can reach: no copy of what its steps overwrite
    runner = evaluate.Runner(model, x, 0, incremental=True)
    shared = evaluate.region_perturbation(runner, x, relevance, patch_size=4, steps=3)
    assert checkpoints and runner.incremental.saved is not None
    torch.testing.assert_close(own.curves["morf"], shared.curves["morf"], rtol=0, atol=1e-12)


def test_chains_whose_patches_reach_most_of_the_model_run_plain_passes_without_keeping_activations():
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 15, padding=7), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, 4)).double().eval()  # every output reads every pixel
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    runner = evaluate.Runner(wide, x, 1, batch_size=64, chains=True)
    curve = evaluate.region_perturbation(runner, x, relevance, patch_size=2).curves["morf"]
    # decided before any pass: a step reaches all the work, so the 16 steps of 3 samples run in one plain pass, and
    # the clean pass (the curve's start) is a plain one too; nothing was kept
    assert runner.chain_plan["share"] == 1.0 and runner.chain_plan["choice"] == "plain"
    assert runner.incremental.passes == {"full": 0, "incremental": 0} and runner.forward_passes == 1 + 1
    assert runner.incremental.kept == []
    plain = evaluate.Runner(wide, x, 1, batch_size=64, incremental=False)
    torch.testing.assert_close(curve, evaluate.region_perturbation(plain, x, relevance, patch_size=2).curves["morf"],
                               rtol=0, atol=1e-12)
    forced = evaluate.Runner(wide, x, 1, batch_size=64, incremental=True, chains=True)
    evaluate.region_perturbation(forced, x, relevance, patch_size=2)
    assert forced.incremental.passes == {"full": 1, "incremental": 16}


def test_without_an_estimate_chains_switch_to_plain_passes_once_they_compute_most_of_the_work(monkeypatch):
    from relprop.evaluate import runner as runner_module

    monkeypatch.setattr(runner_module, "step_share", lambda *args: None)  # e.g. a model the meta device cannot run
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 15, padding=7), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, 4)).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    runner = evaluate.Runner(wide, x, 1, batch_size=64, chains=True)
    evaluate.region_perturbation(runner, x, torch.randn_like(x), patch_size=2)
    # the kept clean pass and one incremental step, which computed all the work: the 15 other steps in one pass
    assert runner.chain_plan["choice"] == "incremental" and runner.chain_plan["share"] is None
    assert runner.incremental.passes == {"full": 1, "incremental": 1} and runner.forward_passes == 1 + 1 + 1


def test_chains_run_fewer_samples_per_pass_when_their_activations_would_pass_the_memory_limit():
    model = small_cnn(size=16)
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    runner = evaluate.Runner(model, x, 0, batch_size=8, incremental=True)
    evaluate.region_perturbation(runner, x, torch.randn_like(x), patch_size=4, steps=1)  # kept: a sample's size
    runner.incremental.max_bytes = 2 * runner.incremental.row_bytes
    rows = []
    model.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    evaluate.region_perturbation(runner, x, torch.randn_like(x), patch_size=4, steps=3)
    # 3 groups of at most 2 samples, 3 steps each: the first kept alone, the other two in one pass stopped at its cut
    # (the linear layer, see engine.together) and their rest run once on both steps' rows stacked (at most
    # batch_size rows)
    assert rows == [2, 2, 4] * 2 + [1, 1, 2]


def test_runner_streams_copies_in_chunks_of_batch_size():
    model = small_cnn()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    evaluate.pixel_flipping(model, x, torch.randn_like(x), 0, regions_per_step=8, batch_size=3)
    assert max(seen) <= 3 and sum(seen) == 2 * 8  # 64 pixels, 8 per step: 8 copies per sample (no clean pass)


def test_baselines_mean_blur_and_tensor_replace_removed_locations():
    model = linear_rows()
    x = torch.randn(2, 6, dtype=torch.float64)
    relevance = torch.arange(6, dtype=torch.float64).expand(2, 6)  # feature 5 is the most relevant
    for baseline, value in [("mean", x.mean(1, keepdim=True).expand(2, 6)), (torch.full((6,), 2.0), 2.0)]:
        result = evaluate.pixel_flipping(model, x, relevance, 0, steps=1, baseline=baseline)
        changed = x.clone()
        changed[:, 5] = value[:, 5] if isinstance(value, torch.Tensor) else value
        assert torch.allclose(result.curves["morf"][:, 1], model(changed)[:, 0])
    images = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    blurred = evaluate.perturb.blurred(images, 1, 1.0)
    radius = torch.arange(-3, 4, dtype=torch.float64)
    kernel = torch.exp(-radius ** 2 / 2)
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(images, (3, 3, 3, 3), mode="replicate")[0, 0]
    reference = sum(kernel[a] * kernel[b] * padded[a:a + 9, b:b + 9] for a in range(7) for b in range(7))
    assert torch.allclose(blurred[0, 0], reference)


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_faithfulness_correlation_correlates_subset_relevance_with_output_drop():
    model = linear_rows(features=10)
    x = torch.randn(2, 10, dtype=torch.float64)
    relevance = torch.randn_like(x)
    result = evaluate.faithfulness_correlation(model, x, relevance, 1, nr_runs=12, subset_size=3, baseline=0.0)
    sums, drops = result.details["relevance_sums"], result.details["output_drops"]
    # the drops are the linear model's own: removing S (to 0) lowers f by sum_{i in S} W_1i x_i
    contributions = (model.weight[1] * x).detach()
    subsets = evaluate.faithfulness._random_subsets(2, 10, 12, 3, 0, "cpu")
    assert all(len(set(subsets[n, k].tolist())) == 3 for n in range(2) for k in range(12))  # without repeats
    for n in range(2):
        expected_drops = [float(contributions[n][subsets[n, k]].sum()) for k in range(12)]
        expected_sums = [float(relevance[n][subsets[n, k]].sum()) for k in range(12)]
        assert np.allclose(drops[n].numpy(), expected_drops) and np.allclose(sums[n].numpy(), expected_sums)
        assert math.isclose(result.scores[n].item(), pearson(expected_sums, expected_drops), rel_tol=1e-9)


def test_faithfulness_correlation_is_one_for_gradient_x_input_on_a_linear_model():
    model = linear_rows(features=10)
    x = torch.randn(3, 10, dtype=torch.float64)
    relevance = (model.weight[2] * x).detach()
    result = evaluate.faithfulness_correlation(model, x, relevance, 2, nr_runs=20, subset_size=4, baseline=0.0)
    assert torch.allclose(result.scores, torch.ones(3, dtype=torch.float64))


def test_sensitivity_n_averages_one_correlation_per_subset_size():
    model = linear_rows(features=10)
    x = torch.randn(2, 10, dtype=torch.float64)
    relevance = torch.randn_like(x)
    result = evaluate.sensitivity_n(model, x, relevance, 0, n=(2, 5), nr_runs=15, baseline=0.0)
    contributions = (model.weight[0] * x).detach()
    for j, size in enumerate((2, 5)):
        subsets = evaluate.faithfulness._random_subsets(2, 10, 15, size, j, "cpu")
        for n in range(2):
            a = [float(relevance[n][subsets[n, k]].sum()) for k in range(15)]
            b = [float(contributions[n][subsets[n, k]].sum()) for k in range(15)]
            assert math.isclose(result.details["correlation_per_n"][n, j].item(), pearson(a, b), rel_tol=1e-9)
    assert torch.allclose(result.scores, result.details["correlation_per_n"].mean(1))


def test_faithfulness_estimate_correlates_each_group_with_its_own_removal():
    model = linear_rows(features=8)
    x = torch.randn(2, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    result = evaluate.faithfulness_estimate(model, x, relevance, 1, features_in_step=2, baseline=0.0)
    contributions = (model.weight[1] * x).detach().numpy()
    for n in range(2):
        order = np.argsort(-relevance[n].numpy(), kind="stable")
        groups = [order[i:i + 2] for i in range(0, 8, 2)]
        a = [relevance[n].numpy()[g].sum() for g in groups]
        b = [contributions[n][g].sum() for g in groups]
        assert math.isclose(result.scores[n].item(), pearson(a, b), rel_tol=1e-9)


def test_monotonicity_is_one_when_adding_features_never_lowers_the_score():
    model = linear_rows(features=6)
    x = torch.randn(4, 6, dtype=torch.float64)
    target = 0
    contributions = (model.weight[target] * x).detach()
    result = evaluate.monotonicity(model, x, contributions, target, baseline=0.0)
    for n in range(4):
        order = np.argsort(np.abs(contributions[n].numpy()), kind="stable")
        current, curve = np.zeros(6), []
        for i in order:
            current[i] = x[n, i]
            curve.append(scores(model, current[None], [target])[0])
        assert result.curves["restored"][n].numpy() == pytest.approx(curve)
        assert result.scores[n].item() == float(np.all(np.diff(curve) >= 0))


def test_irof_removes_superpixels_by_mean_relevance_and_returns_area_over_the_curve():
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    segments = (torch.arange(8).view(8, 1) // 3 * 3 + torch.arange(8).view(1, 8) // 3).expand(2, 8, 8).clone()
    segments[1] = torch.arange(8).view(8, 1) // 4 * 2 + torch.arange(8).view(1, 8) // 4  # 4 segments only
    result = evaluate.irof(model, x, relevance, 0, segments=segments, baseline=0.0)
    pooled = relevance.sum(1).numpy()
    for n in range(2):
        labels = segments[n].numpy()
        count = labels.max() + 1
        means = [pooled[n][labels == s].mean() for s in range(count)]
        current = x[n].numpy().copy()
        clean = scores(model, current[None], [0])[0]
        curve = [1.0]
        for s in np.argsort(-np.array(means), kind="stable"):
            current[:, labels == s] = 0.0
            curve.append(scores(model, current[None], [0])[0] / clean)
        assert result.curves["morf"][n, :count + 1].numpy() == pytest.approx(curve)
        assert result.scores[n].item() == pytest.approx(1 - np.trapezoid(curve, dx=1 / count))


def test_irof_segments_images_with_slic_when_no_segments_are_given():
    pytest.importorskip("skimage")
    from skimage.segmentation import slic

    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    labels = evaluate.superpixels(x, n_segments=6)
    assert np.array_equal(labels[0].numpy(), slic(x[0].permute(1, 2, 0).numpy(), n_segments=6, start_label=0,
                                                  channel_axis=-1))


def test_noisy_linear_imputation_solves_the_neighbour_equations():
    images = torch.rand(2, 2, 6, 7, dtype=torch.float64)
    removed = torch.zeros(2, 6, 7, dtype=torch.bool)
    removed[0, 1:4, 2:5] = True
    removed[1, 0, :3] = True
    removed[1, 5, 6] = True
    filled = evaluate.noisy_linear_imputation(images, removed, noise=0.0)
    weights = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6, (1, -1): 1 / 12,
               (1, 0): 1 / 6, (1, 1): 1 / 12}
    for n in range(2):
        for c in range(2):
            for i, j in removed[n].nonzero().tolist():
                total = value = 0.0
                for (di, dj), w in weights.items():
                    if 0 <= i + di < 6 and 0 <= j + dj < 7:
                        total += w
                        value += w * float(filled[n, c, i + di, j + dj])
                assert float(filled[n, c, i, j]) == pytest.approx(value / total, abs=1e-7)
            assert torch.equal(filled[n, c][~removed[n]], images[n, c][~removed[n]])


def test_road_accuracy_per_percentage_uses_the_imputed_copies():
    model = small_cnn()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    result = evaluate.road(model, x, relevance, "predicted", percentages=(25, 50), noise=0.0)
    predicted = model(x).argmax(1)
    pooled = relevance.sum(1).flatten(1)
    for j, p in enumerate((25, 50)):
        count = int(64 * p / 100)
        removed = torch.zeros(3, 64, dtype=torch.bool)
        for n in range(3):
            removed[n, pooled[n].argsort(descending=True, stable=True)[:count]] = True
        copies = evaluate.noisy_linear_imputation(x, removed.view(3, 8, 8), 0.0)
        expected = (model(copies).argmax(1) == predicted).double()
        assert torch.equal(result.curves["accuracy"][:, j], expected)
    assert torch.allclose(result.scores, result.curves["accuracy"].mean(1))


def test_road_noise_is_seeded_and_independent_of_batch_size():
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    one = evaluate.road(model, x, relevance, "predicted", percentages=(30, 60), noise=0.05, batch_size=1, seed=3)
    all_ = evaluate.road(model, x, relevance, "predicted", percentages=(30, 60), noise=0.05, batch_size=64, seed=3)
    assert torch.allclose(one.curves["score"], all_.curves["score"], rtol=0, atol=1e-12)


def test_infidelity_is_zero_for_gradient_x_input_style_relevance_of_a_linear_model():
    model = linear_rows()
    x = torch.randn(3, 6, dtype=torch.float64)
    exact = model.weight[1].detach().expand(3, 6)  # I . W = f(x) - f(x - I) for a linear f
    assert torch.allclose(evaluate.infidelity(model, x, exact, 1).scores, torch.zeros(3, dtype=torch.float64),
                          atol=1e-20)
    wrong = evaluate.infidelity(model, x, exact * 2, 1, n_perturb_samples=4, noise_std=0.5)
    for n in range(3):
        errors = []
        for k in range(4):
            noise = torch.randn(6, generator=evaluate.runner.pair_generator(0, n, k, "cpu"),
                                dtype=torch.float64) * 0.5
            errors.append((float(noise @ (exact[n] * 2)) - float(noise @ model.weight[1].detach())) ** 2)
        assert wrong.scores[n].item() == pytest.approx(np.mean(errors))


def test_sufficiency_is_the_share_of_near_explanations_with_the_same_prediction():
    model = linear_rows(features=3, classes=2)
    x = torch.randn(6, 3, dtype=torch.float64)
    relevance = torch.randn(6, 3, dtype=torch.float64)
    result = evaluate.sufficiency(model, x, relevance, threshold=0.5)
    predicted = model(x).argmax(1).numpy()
    a = relevance.numpy()
    distances = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    distances /= distances.max()
    for n in range(6):
        near = [m for m in range(6) if m != n and distances[n, m] <= 0.5]
        expected = np.mean([predicted[m] == predicted[n] for m in near]) if near else 0.0
        assert result.scores[n].item() == pytest.approx(expected)


def test_metrics_work_on_token_sequences_with_channels_last():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5 * 4, 3)).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)  # 5 tokens, embeddings of 4
    relevance = torch.randn_like(x)
    result = evaluate.pixel_flipping(model, x, relevance, 0, baseline=0.0)
    order = relevance.sum(2).argsort(dim=1, descending=True, stable=True)
    copy = x.clone()
    copy[0, order[0, :2]] = 0.0  # two tokens, whole embeddings
    assert result.curves["morf"].shape == (2, 6)
    assert result.curves["morf"][0, 2].item() == pytest.approx(model(copy)[0, 0].item())


def deep_cnn(channels):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(channels, 3)).double().eval()


def test_a_chain_plan_decides_before_any_pass_and_both_choices_give_the_same_curve():
    deep = deep_cnn(48)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    relevance = torch.randn_like(x)
    chosen = evaluate.Runner(deep, x, 1, chains=True)
    incremental = evaluate.region_perturbation(chosen, x, relevance, patch_size=2, steps=8)
    # a 2x2 patch reaches a few percent of the work, and the 8 ops' own cost is under half a plain pass (44 million
    # multiply-adds a row): the chain pays, and the clean pass is kept as its base
    assert chosen.chain_plan["choice"] == "incremental" and chosen.chain_plan["share"] < 0.1
    assert chosen.chain_plan["overhead"] == pytest.approx(8 * 2.5e6 / (32 * 32 * 9 * (3 * 48 + 2 * 48 * 48) + 48 * 3))
    assert chosen.incremental.passes == {"full": 1, "incremental": 8}
    plain = evaluate.Runner(deep, x, 1, incremental=False)
    torch.testing.assert_close(incremental.curves["morf"], evaluate.region_perturbation(
        plain, x, relevance, patch_size=2, steps=8).curves["morf"], rtol=0, atol=1e-12)


def test_a_chain_whose_ops_cost_more_than_the_work_they_save_runs_plain_passes():
    deep = deep_cnn(8)  # 2.4 million multiply-adds a row: each of its 8 ops costs a step about a plain pass
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    relevance = torch.randn_like(x)
    runner = evaluate.Runner(deep, x, 1, chains=True)
    curve = evaluate.region_perturbation(runner, x, relevance, patch_size=2, steps=8).curves["morf"]
    assert runner.chain_plan["share"] < 0.1 and runner.chain_plan["overhead"] > 1
    assert runner.chain_plan["choice"] == "plain" and runner.incremental.passes == {"full": 0, "incremental": 0}
    plain = evaluate.Runner(deep, x, 1, incremental=False)
    torch.testing.assert_close(curve, evaluate.region_perturbation(plain, x, relevance, patch_size=2, steps=8)
                               .curves["morf"], rtol=0, atol=1e-12)


def test_metrics_whose_numbers_do_not_need_f_of_x_make_no_clean_pass():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    runner = evaluate.Runner(model, x, 1, batch_size=64)
    flipped = evaluate.pixel_flipping(runner, x, relevance, regions_per_step=16)
    assert runner.forward_passes == 1 and flipped.details["perturbed"].shape == (2, 4)  # 4 steps of 2: one pass
    assert runner.forward_passes == 1
    assert flipped.scores.shape == (2,) and runner.forward_passes == 2  # AOPC starts from f(x): read, then made
    torch.testing.assert_close(flipped.curves["morf"][:, 1:], flipped.details["perturbed"], rtol=0, atol=0)
    rows = []
    model.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    # monotonicity: 4 steps of 2 samples, the last of which restores x (that is the clean pass); ROAD: 2 steps
    for metric, copies in ((lambda source: evaluate.monotonicity(source, x, relevance, 1, features_in_step=16), 8),
                           (lambda source: evaluate.road(source, x, relevance, 1, percentages=(20, 60)), 4)):
        rows.clear()
        ours = metric(model)
        assert sum(rows) == copies  # as many copies as Quantus passes, and no more
        torch.testing.assert_close(ours.scores, metric(evaluate.Runner(model, x, 1)).scores, rtol=0, atol=0)


def test_chained_steps_run_the_linear_layers_once_for_several_steps_with_the_plain_passes_numbers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 5)).eval()
    x, relevance = torch.rand(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    rows = []
    model[-1].register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    for metric in (evaluate.region_perturbation, evaluate.selectivity):  # a runner each: no copy seen before
        rows.clear()
        chained = evaluate.Runner(model, x, 1, batch_size=12, softmax=True, incremental=True)
        got = metric(chained, x, relevance, patch_size=4)
        # the clean pass kept, then the classifier once for the 16 steps' rows (up to CHAIN_STACK copies at once)
        assert rows == [3, 48]
        plain = evaluate.Runner(model, x, 1, batch_size=12, softmax=True, incremental=False)
        expected = metric(plain, x, relevance, patch_size=4)
        for key in expected.curves:
            torch.testing.assert_close(got.curves[key], expected.curves[key], rtol=1e-5, atol=1e-7)


def test_a_shared_runner_copies_at_most_its_base_for_later_chains_and_they_score_as_fresh_runners(monkeypatch):
    from relprop.evaluate import runner as runner_module

    monkeypatch.setattr(runner_module, "OP_COST", 0.0)  # a model this small runs chains in plain passes otherwise
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    first, second = torch.randn_like(x), torch.randn_like(x)
    copied, runners = {}, {}
    for checkpoints in (False, True):
        runner = runners[checkpoints] = evaluate.Runner(model, x, 0, checkpoints=checkpoints)
        runner.output  # noqa: B018  (the clean pass, outside what is counted, as benchmark() makes it)
        with Clones() as clones:
            shared = evaluate.region_perturbation(runner, x, first, patch_size=4)
        copied[checkpoints] = clones.bytes
    engine = runners[True].incremental
    # the checkpoint copies each kept output at most once, whole; a log of every box 16 steps overwrote held 1.6x that
    assert 0 < copied[True] - copied[False] <= engine.kept_bytes()
    later = evaluate.region_perturbation(runners[True], x, second, patch_size=4)
    assert engine.passes["full"] == 1  # the second chain started from the checkpoint, not from a fresh base
    for result, relevance in ((shared, first), (later, second)):
        alone = evaluate.region_perturbation(model, x, relevance, 0, patch_size=4)
        torch.testing.assert_close(result.curves["morf"], alone.curves["morf"], rtol=0, atol=1e-12)


def test_a_metrics_own_runner_steps_its_first_chain_from_the_clean_pass_it_kept():
    deep = deep_cnn(48)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    relevance = torch.randn_like(x)
    # as a metric builds its own runner for relevance given as a tensor: no checkpoints, the clean pass still to make
    own = evaluate.Runner(deep, x, 1, chains=True, checkpoints=False)
    curve = evaluate.region_perturbation(own, x, relevance, patch_size=2, steps=8).curves["morf"]
    assert own.incremental.passes == {"full": 1, "incremental": 8}  # the clean pass, then every step from it
    plain = evaluate.Runner(deep, x, 1, incremental=False)
    torch.testing.assert_close(curve, evaluate.region_perturbation(plain, x, relevance, patch_size=2, steps=8)
                               .curves["morf"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("checkpoints", [True, False])
def test_a_runner_told_of_chains_keeps_its_clean_pass_and_the_first_chain_steps_from_it(checkpoints):
    deep = deep_cnn(48)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    relevance = torch.randn_like(x)
    runner = evaluate.Runner(deep, x, 1, chains=True, checkpoints=checkpoints)
    clean = runner.output  # read first, as benchmark() reads it for the predicted class
    assert runner.incremental.passes == {"full": 1, "incremental": 0} and runner.forward_passes == 1
    curve = evaluate.region_perturbation(runner, x, relevance, patch_size=2, steps=8).curves["morf"]
    assert runner.incremental.passes == {"full": 1, "incremental": 8}
    plain = evaluate.Runner(deep, x, 1, incremental=False)
    torch.testing.assert_close(clean, plain.output, rtol=0, atol=1e-12)
    torch.testing.assert_close(curve, evaluate.region_perturbation(plain, x, relevance, patch_size=2, steps=8)
                               .curves["morf"], rtol=0, atol=1e-12)
    if checkpoints:  # a second chain of the same samples returns to the clean pass
        evaluate.region_perturbation(runner, x, -relevance, patch_size=2, steps=8)
        assert runner.incremental.passes == {"full": 1, "incremental": 16}


def test_a_kept_clean_pass_larger_than_the_engines_limit_is_no_base_and_the_curve_is_unchanged():
    deep = deep_cnn(8)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    relevance = torch.randn_like(x)
    runner = evaluate.Runner(deep, x, 1, chains=True, incremental=True)
    runner.incremental.max_bytes = 1  # every kept pass is dropped at once
    runner.output  # noqa: B018
    assert runner.incremental.passes["full"] == 1 and runner.incremental.base_input is None
    assert not runner.clean_base
    curve = evaluate.region_perturbation(runner, x, relevance, patch_size=2, steps=4).curves["morf"]
    plain = evaluate.Runner(deep, x, 1, incremental=False)
    torch.testing.assert_close(curve, evaluate.region_perturbation(plain, x, relevance, patch_size=2, steps=4)
                               .curves["morf"], rtol=0, atol=1e-12)
