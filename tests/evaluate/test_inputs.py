"""What every metric checks on its way in, and what a Result offers."""
import pytest
import torch

import relprop
from relprop import evaluate
from .models import small_cnn


def test_relevance_of_another_shape_is_refused_with_the_fix():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"relevance has shape \(2, 8, 8\) but the input x has shape \(2, 3, 8, 8\)"):
        evaluate.pixel_flipping(model, x, torch.randn(2, 8, 8), 0)


def test_nan_relevance_is_refused_naming_the_samples():
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    relevance[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values \(samples \[2\]\)"):
        evaluate.sparseness(x, relevance)


def test_a_model_whose_output_shape_changes_is_refused():
    class Moody(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 3 if len(x) < 5 else 4, dtype=x.dtype) + x.flatten(1).sum(1, keepdim=True)

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    # 32 copies in passes of at most 5: 5 first, then the 27 left as 5, 5, 5, 4, 4, 4
    with pytest.raises(ValueError, match="returned 3 classes for 4 inputs but 4 on an earlier pass"):
        evaluate.pixel_flipping(Moody(), x, torch.randn_like(x), 0, batch_size=5)


def test_a_model_without_class_scores_is_refused():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"class scores shaped \(batch, classes\)"):
        evaluate.pixel_flipping(torch.nn.Identity(), x, torch.randn_like(x), 0)


def test_patches_and_steps_that_do_not_fit_are_refused():
    model = small_cnn()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not tile locations shaped"):
        evaluate.region_perturbation(model, x, torch.randn_like(x), 0, patch_size=3)
    with pytest.raises(ValueError, match=r"steps must be an int from 1 to 4"):
        evaluate.region_perturbation(model, x, torch.randn_like(x), 0, patch_size=4, steps=5)
    with pytest.raises(ValueError, match="features_in_step must be a positive int dividing"):
        evaluate.monotonicity(model, x, torch.randn_like(x), 0, features_in_step=5)
    with pytest.raises(ValueError, match="subset_size must be an int from 1 to 63"):
        evaluate.faithfulness_correlation(model, x, torch.randn_like(x), 0, subset_size=64)


def test_an_explanation_supplies_relevance_and_its_target():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    explanation = relprop.explain(model, x, target=[2, 1], composite="epsilon")
    from_explanation = evaluate.pixel_flipping(model, x, explanation, regions_per_step=16)
    from_tensor = evaluate.pixel_flipping(model, x, explanation.relevance, [2, 1], regions_per_step=16)
    assert torch.equal(from_explanation.curves["morf"], from_tensor.curves["morf"])


def test_an_explanation_brings_the_clean_output_so_metrics_make_no_clean_pass():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    explanation = relprop.explain(model, x, target=[2, 1], composite="epsilon")
    from_explanation = evaluate.Runner.of(model, x, relevance=explanation)
    from_tensor = evaluate.Runner.of(model, x, [2, 1], relevance=explanation.relevance)
    assert from_explanation.forward_passes == 0 and from_tensor.forward_passes == 0  # the clean pass: when read
    from_tensor.output
    assert from_tensor.forward_passes == 1
    assert torch.allclose(from_explanation.output, from_tensor.output, rtol=1e-12, atol=0)
    picked = evaluate.Runner.of(model, x, relevance=explanation, output=lambda out: out[:, :3])  # a selector: a pass
    assert picked.output.shape == (2, 3) and picked.forward_passes == 1
    with pytest.raises(ValueError, match=r"clean_output is shaped \(2,\); give the model's class scores"):
        evaluate.Runner(model, x, 0, clean_output=torch.zeros(2))


def test_relevance_without_a_target_is_refused_until_the_target_is_said():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    explanation = relprop.explain(model, x, target=0, composite="epsilon")
    with pytest.raises(ValueError, match=r"does not say which class it explains; pass target="):
        evaluate.region_perturbation(model, x, explanation.relevance, patch_size=4)
    from_explanation = evaluate.region_perturbation(model, x, explanation, patch_size=4)
    from_tensor = evaluate.region_perturbation(model, x, explanation.relevance, 0, patch_size=4)
    torch.testing.assert_close(from_tensor.scores, from_explanation.scores, rtol=0, atol=1e-12)
    predicted = evaluate.region_perturbation(model, x, explanation.relevance, "predicted", patch_size=4)
    by_hand = evaluate.region_perturbation(model, x, explanation.relevance, model(x).argmax(1), patch_size=4)
    torch.testing.assert_close(predicted.scores, by_hand.scores, rtol=0, atol=1e-12)
    assert evaluate.sparseness(x, explanation.relevance).scores.shape == (2,)  # no target needed: nothing scored
    with pytest.raises(ValueError, match=r"target must be an int, one int per sample or \"predicted\""):
        evaluate.pixel_flipping(model, x, explanation.relevance, "label")


def test_a_runner_refuses_relevance_of_other_classes_or_of_none_said():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    explanation = relprop.explain(model, x, target=0, composite="epsilon")
    with pytest.raises(ValueError, match=r"the explanation explains classes \[0, 0\] but this runner scores \[1, 1\]"):
        evaluate.pixel_flipping(evaluate.Runner(model, x, 1), x, explanation, regions_per_step=32)
    with pytest.raises(ValueError, match="does not say which class it explains"):
        evaluate.pixel_flipping(evaluate.Runner(model, x), x, explanation.relevance, regions_per_step=32)
    with pytest.raises(ValueError, match=r"explains classes \[0, 0\] but this runner scores"):
        evaluate.pixel_flipping(evaluate.Runner(model, x), x, explanation, regions_per_step=32)  # it predicts [0, 1]
    evaluate.pixel_flipping(evaluate.Runner(model, x, explanation.target), x, explanation, regions_per_step=32)
    evaluate.pixel_flipping(evaluate.Runner(model, x, "predicted"), x, explanation.relevance, regions_per_step=32)


def test_a_shared_runner_runs_the_clean_forward_pass_once():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    runner = evaluate.Runner(model, x, 0, batch_size=8)
    relevance = torch.randn_like(x)
    evaluate.pixel_flipping(runner, x, relevance, regions_per_step=32)
    evaluate.faithfulness_estimate(runner, x, relevance, features_in_step=32)
    assert runner.forward_passes == 1 + 1 + 1  # x once, then one chunk of copies per metric
    with pytest.raises(ValueError, match="built for another input"):
        evaluate.pixel_flipping(runner, x + 1, relevance)


class RowCounter(torch.nn.Module):
    """A model that records how many rows each forward pass gets."""

    def __init__(self, model):
        super().__init__()
        self.model, self.passes = model, []

    def forward(self, x):
        self.passes.append(len(x))
        return self.model(x)


def assert_shifted_scores(runner, model, x, shifts):
    """The runner's class-1 scores of x shifted by each of shifts (step k: x + shifts[k]) are the model's own."""
    scores = runner.scores(len(shifts), lambda rows, steps: x[rows] + shifts[steps].view(-1, 1, 1, 1))
    with torch.no_grad():
        expected = torch.stack([model(x + shift)[:, 1] for shift in shifts], 1)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)


def test_on_a_cpu_passes_hold_fewer_copies_where_batch_size_would_make_large_activations(monkeypatch):
    from relprop.evaluate import runner as runner_module

    monkeypatch.setattr(runner_module, "PASS_BYTES", 8192)  # small, for a small model: conv outputs 2 KiB a row
    model = RowCounter(small_cnn())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    runner = evaluate.Runner(model, x, 1, batch_size=64)
    assert_shifted_scores(runner, model.model, x, torch.linspace(0.1, 0.6, 6, dtype=torch.float64))
    # the first pass holds x's 2 rows and finds 2 KiB per row at most: 4 rows fit 8 KiB; the 10 copies left take
    # 3 passes of at most 4 rows, balanced (no pass of 2 at the end)
    assert runner.pass_rows == 4 and model.passes == [2, 4, 3, 3]


def test_passes_hold_at_least_as_many_rows_as_x_whatever_their_activations(monkeypatch):
    from relprop.evaluate import runner as runner_module

    monkeypatch.setattr(runner_module, "PASS_BYTES", 1024)
    model = RowCounter(small_cnn())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    runner = evaluate.Runner(model, x, 1, batch_size=64)
    runner.scores(4, lambda rows, steps: x[rows] * (2 + steps.view(-1, 1, 1, 1)))  # no copy equals its sample
    assert runner.pass_rows == 3 and model.passes == [3, 3, 3, 3]


def test_the_largest_activation_counts_tensors_a_pass_allocates_for_its_rows_not_views():
    from relprop.evaluate.runner import _LargestOutput

    x, weight = torch.randn(4, 3, 5, 5), torch.randn(4, 1000)
    with _LargestOutput(4) as largest:
        flat = x.flatten(1)  # a view: nothing allocated
        weight.t()  # a view of a weight, rows first by chance
        torch.ones(3, 1000)  # not the pass's rows
        wide = flat * 2  # 4 rows x 75 values
    assert largest.bytes == wide.numel() * wide.element_size()


def test_copies_equal_to_their_sample_take_the_clean_output_without_a_forward_pass():
    model = RowCounter(small_cnn())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    runner = evaluate.Runner(model, x, 1, batch_size=8)
    shifts = torch.tensor([0.0, 0.5, 0.0, 1.0], dtype=torch.float64)  # steps 0 and 2 leave the sample as it is
    assert_shifted_scores(runner, model.model, x, shifts)
    # x, then chunks of 8 and 4 (sample, step) pairs, of which only the shifted half runs
    assert model.passes == [3, 4, 2]


@pytest.mark.parametrize("incremental", [False, True], ids=["plain", "incremental"])
def test_a_copy_the_runner_scored_before_costs_no_second_forward_pass(incremental):
    model = RowCounter(small_cnn())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    shared = evaluate.Runner(model, x, 1, batch_size=64, incremental=incremental)
    aopc = evaluate.region_perturbation(shared, x, relevance, patch_size=4)
    # 4 regions removed one by one for 3 samples: in one pass (the clean pass waits until the curve is read), or
    # (incremental) x kept, then one pass of the 4 steps stopped before the linear layer (engine.together), which
    # runs once for all 4 steps' rows
    assert model.passes == ([3, 3, 12] if incremental else [12])
    selectivity = evaluate.selectivity(shared, x, relevance, patch_size=4)  # the same copies: no pass at all
    lerf = evaluate.region_perturbation(shared, x, relevance, patch_size=4, order="lerf")
    morf = [3, 3, 12]
    assert model.passes == (morf + [3, 9] if incremental else [12, 9])  # LeRF's last copy is MoRF's
    aopc.scores
    assert model.passes == (morf + [3, 9] if incremental else [12, 9, 3])  # AOPC starts from f(x)
    fresh = evaluate.Runner(small_cnn(), x, 1, incremental=incremental)
    # a fresh runner of the model in eval mode keeps its outputs channels-last (RowCounter is in training mode): float
    # rounding apart
    torch.testing.assert_close(selectivity.curves["morf"], evaluate.selectivity(
        fresh, x, relevance, patch_size=4).curves["morf"], rtol=0, atol=1e-12)
    assert torch.equal(selectivity.curves["morf"], aopc.curves["morf"])
    torch.testing.assert_close(lerf.curves["lerf"], evaluate.region_perturbation(
        fresh, x, relevance, patch_size=4, order="lerf").curves["lerf"], rtol=0, atol=1e-12)


def test_result_summary_and_dataframe():
    pytest.importorskip("pandas")
    result = evaluate.Result("m", torch.tensor([1.0, 3.0, float("nan")], dtype=torch.float64), True,
                             details={"extra": torch.tensor([4.0, 5.0, 6.0])})
    summary = result.summary()
    assert summary["mean"] == 2.0 and summary["count"] == 2 and summary["median"] == 1.0
    frame = result.to_dataframe()
    assert list(frame.columns) == ["metric", "score", "extra"] and frame["extra"].tolist() == [4.0, 5.0, 6.0]


def test_importing_evaluate_loads_no_optional_library():
    import subprocess
    import sys

    code = ("import sys, relprop; relprop.evaluate; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'skimage', 'scipy', 'pandas', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
def test_sorted_rows_equals_torch_sort_whichever_library_sorts(dtype):
    from relprop.evaluate.inputs import sorted_rows

    values = (torch.randn(3, 50) * 10).to(dtype)
    values[0, :5] = values[0, 5]  # ties
    assert torch.equal(sorted_rows(values), values.sort(-1).values)


class Viewing(torch.nn.Module):
    """A model that flattens with .view, which a channels-last activation refuses."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3, padding=1).double(), torch.nn.Linear(4 * 64, 3).double()
        self.calls = []

    def forward(self, x):
        self.calls.append(x.is_contiguous())
        return self.head(self.conv(x).view(len(x), -1))


def test_plain_passes_run_channels_last_and_fall_back_for_a_model_that_cannot_take_it():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    relevance = torch.randn_like(x)
    viewing = Viewing()
    runner = evaluate.Runner(viewing, x, 1, channels_last=True)
    flipped = evaluate.pixel_flipping(runner, x, relevance, regions_per_step=16)
    assert not runner.channels_last and viewing.calls == [False, True]  # tried channels-last once, then as given
    as_given = evaluate.pixel_flipping(evaluate.Runner(viewing, x, 1, channels_last=False), x, relevance,
                                       regions_per_step=16)
    torch.testing.assert_close(flipped.curves["morf"], as_given.curves["morf"], rtol=0, atol=0)
    model = small_cnn()
    layouts = []
    model.register_forward_pre_hook(lambda module, args: layouts.append(args[0].is_contiguous()))
    fast = evaluate.pixel_flipping(evaluate.Runner(model, x, 1, channels_last=True), x, relevance, regions_per_step=16)
    assert layouts == [False]  # one pass of 8 channels-last copies
    plain = evaluate.pixel_flipping(model, x, relevance, 1, regions_per_step=16)  # as given, by default (8 px)
    torch.testing.assert_close(fast.curves["morf"], plain.curves["morf"], rtol=1e-12, atol=0)


def test_plain_passes_run_channels_last_by_default_for_large_images_on_a_cpu_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 8, stride=8), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(2, 3)).eval()
    large = torch.rand(1, 3, evaluate.runner.CHANNELS_LAST_FROM, evaluate.runner.CHANNELS_LAST_FROM + 8)
    small = large[..., :-16, :]  # one side below the threshold
    assert evaluate.Runner(model, large, 0).channels_last
    assert not evaluate.Runner(model, small, 0).channels_last
    assert not evaluate.Runner(model, large, 0, channels_last=False).channels_last
    assert evaluate.Runner(model, small, 0, channels_last=True).channels_last
    assert not evaluate.Runner(model, large.flatten(2), 0).channels_last  # not an image batch
    model[0].train()  # a module in training mode: its layout stays
    assert not evaluate.Runner(model, large, 0).channels_last
    model.eval()
    layouts = []
    model.register_forward_pre_hook(lambda module, args: layouts.append(args[0].is_contiguous()))
    evaluate.Runner(model, large, 0).clean  # noqa: B018 (the clean pass)
    assert layouts == [False]


def test_a_target_outside_the_classes_is_refused_on_the_first_pass_that_tells_the_classes():
    model = small_cnn()  # 4 classes
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    runner = evaluate.Runner(model, x, 9)  # no pass yet: the number of classes is not known
    with pytest.raises(ValueError, match=r"target \[9, 9\] out of range: the model has 4 classes"):
        evaluate.pixel_flipping(runner, x, torch.randn_like(x), regions_per_step=16)
    explanation = relprop.explain(model, x, target=0, composite="epsilon")
    with pytest.raises(ValueError, match="out of range: the model has 4 classes"):  # known from the Explanation
        evaluate.Runner.of(model, x, 7, relevance=explanation)
    with pytest.raises(ValueError, match="class indices start at 0"):
        evaluate.Runner(model, x, -1)
