"""benchmark(): several methods by several metrics in one pass over the data, the same numbers as each metric alone."""
import os
import subprocess
import sys

import pytest
import torch

from relprop import evaluate
from relprop.evaluate.benchmark import Batch
from .models import small_cnn


def gradient_x_input(model, x, target):
    leaf = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf).gather(1, target.view(-1, 1)).sum(), leaf)
    return grad * x


@pytest.fixture
def data():
    torch.manual_seed(3)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, -1])
    masks = torch.zeros(5, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 3:6] = True
    return x, labels, masks


def test_benchmark_scores_equal_each_metric_run_alone_batch_by_batch(data):
    model = small_cnn()
    x, labels, masks = data
    methods = {"gxi": gradient_x_input, "abs": lambda m, inputs, t: gradient_x_input(m, inputs, t).abs()}
    result = evaluate.benchmark(model, data, methods, ["relevance_mass_accuracy", "aopc", "sparseness"],
                                batch_size=2, options={"aopc": {"patch_size": 4}})
    target = torch.where(labels >= 0, labels, model(x).argmax(1))
    for label, explain in methods.items():
        for start in range(0, 5, 2):  # the benchmark's batches
            part = slice(start, start + 2)
            relevance = explain(model, x[part], target[part])
            expected = {
                "relevance_mass_accuracy": evaluate.relevance_mass_accuracy(x[part], relevance, masks[part]).scores,
                "aopc": evaluate.region_perturbation(model, x[part], relevance, target[part], patch_size=4).scores,
                "sparseness": evaluate.sparseness(x[part], relevance).scores}
            for metric, values in expected.items():
                assert torch.allclose(result.scores[label, metric][part], values, equal_nan=True)
    table = result.table()
    assert table.loc["abs", "aopc"] == pytest.approx(result.scores["abs", "aopc"].mean().item())
    assert result.curves["gxi", "aopc"]["morf"].shape == (5,)  # 4 regions: 5 points, averaged over samples


def test_benchmark_uses_relevance_a_source_already_has(data):
    x, labels, masks = data
    stored = torch.randn_like(x)

    class Store:
        def batches(self, batch_size):
            yield Batch(x, labels, masks, relevance={"stored": stored})

    def never(*args):
        raise AssertionError("the stored relevance should have been used")

    result = evaluate.benchmark(small_cnn(), Store(), {"stored": never}, ["relevance_rank_accuracy"])
    assert torch.equal(result.scores["stored", "relevance_rank_accuracy"],
                       evaluate.relevance_rank_accuracy(x, stored, masks).scores)


def test_benchmark_ranks_by_each_metrics_direction_and_reports_what_it_could_not_compute(data, tmp_path):
    x, labels, _ = data
    loader = [(x[:3], labels[:3]), {"x": x[3:], "label": labels[3:]}]  # no masks anywhere
    methods = {"gxi": gradient_x_input, "noise": lambda m, inputs, t: torch.randn_like(inputs)}
    result = evaluate.benchmark(small_cnn(), loader, methods, ["pointing_game", "complexity", "effective_complexity"])
    assert set(result.errors) == {("gxi", "pointing_game"), ("noise", "pointing_game")}
    assert "needs ground-truth masks" in result.errors["gxi", "pointing_game"]
    ranking = result.ranking()
    table = result.table()
    better = "gxi" if table.loc["gxi", "complexity"] < table.loc["noise", "complexity"] else "noise"
    assert ranking.loc[better, "complexity"] == 1.0  # lower complexity ranks first
    result.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"scores.csv", "table.csv", "ranking.csv", "table.md",
                                                   "report.html"}
    assert "Not computed" in (tmp_path / "report.html").read_text()


def test_benchmark_report_draws_the_curves(data, tmp_path):
    result = evaluate.benchmark(small_cnn(), data, {"gxi": gradient_x_input}, ["aopc"],
                                options={"aopc": {"patch_size": 4}})
    assert "data:image/png;base64," in result.html()


def test_benchmark_refuses_unknown_metrics_and_methods(data):
    with pytest.raises(ValueError, match="unknown metric 'accuracy'"):
        evaluate.benchmark(small_cnn(), data, ["gradient"], ["accuracy"])
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        evaluate.benchmark(small_cnn(), data, ["magic"], ["auc"])


def relprop_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "relprop", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_evaluate_writes_the_table_and_report_for_the_demo(tmp_path):
    out = tmp_path / "report"
    run = relprop_cli("evaluate", "demo", "--model", "demo", "--count", "4", "--methods", "epsilon,gradient",
                      "--metrics", "relevance_mass_accuracy,pointing_game,aopc", "--patch-size", "8", "--out", out)
    assert run.returncode == 0, run.stderr
    assert "| method | relevance_mass_accuracy ↑ | pointing_game ↑ | aopc ↑ | mean rank |" in run.stdout
    assert (out / "report.html").exists() and (out / "table.md").read_text().count("\n") == 4


def test_benchmark_reports_each_method_and_metric_as_it_goes_and_the_seconds_per_metric(data):
    from relprop.evaluate.benchmark import Plan

    plan = Plan({"gxi": gradient_x_input}, ["sparseness", "aopc"], "label", 5, {"aopc": {"patch_size": 4}}, {})
    calls = []
    plan.evaluate(small_cnn(), plan.explainers(), Batch(*data), on_pair=lambda *call: calls.append(call))
    assert [(m, k, s is None) for m, k, s in calls] == [("gxi", "sparseness", True), ("gxi", "sparseness", False),
                                                         ("gxi", "aopc", True), ("gxi", "aopc", False)]
    result = evaluate.benchmark(small_cnn(), data, {"gxi": gradient_x_input}, ["sparseness", "aopc"], batch_size=2)
    assert set(result.seconds) == {"sparseness", "aopc"} and all(s >= 0 for s in result.seconds.values())


def test_cli_evaluate_says_counts_in_words_and_the_time_per_metric(tmp_path):
    run = relprop_cli("evaluate", "demo", "--model", "demo", "--count", "1", "--methods", "gradient",
                      "--metrics", "sparseness", "--out", tmp_path / "one")
    assert run.returncode == 0, run.stderr
    assert "evaluated 1 method by 1 metric on 1 sample;" in run.stdout
    assert "time per metric (all methods): sparseness " in run.stderr


def test_cli_evaluate_prints_each_method_and_metric_as_it_starts_and_ends_when_stderr_is_not_a_terminal(tmp_path):
    run = relprop_cli("evaluate", "demo", "--model", "demo", "--count", "2", "--methods", "epsilon,gradient",
                      "--metrics", "aopc,randomisation,sparseness", "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("relprop: ")]
    pairs = [(method, metric) for method in ("epsilon", "gradient") for metric in ("aopc", "randomisation",
                                                                                   "sparseness")]
    expected = []
    for number, (method, metric) in enumerate(pairs, 1):
        expected += [f"relprop: evaluating {method} / {metric} ({number} of 6)", f"relprop: {method} / {metric} took"]
    assert [line if "evaluating" in line else line[:line.index(" took") + 5] for line in lines] == expected
    assert "aopc: regions of 4x4 pixels (--patch-size), removed in at most 16 steps (--steps)" in run.stderr
    table = run.stdout.splitlines()
    assert table[0] == "| method | aopc ↑ | randomisation ↓ | sparseness ↑ | mean rank |"
    assert all(len(row.split("|")) == 7 and "nan" not in row for row in table[2:4])  # scores for both methods


def test_the_report_tables_mark_better_directions_in_one_header_row_and_render_in_chromium(data, tmp_path):
    import re

    from tests.browser import rendered

    result = evaluate.benchmark(small_cnn(), data, {"gxi": gradient_x_input, "gradient": "gradient"},
                                ["sparseness", "aopc", "selectivity"], batch_size=5,
                                options={"aopc": {"patch_size": 4}, "selectivity": {"patch_size": 4}})
    result.save(tmp_path)
    page = (tmp_path / "report.html").read_text()
    tables = re.findall(r"<table>(.*?)</table>", page, re.S)
    assert len(tables) == 2
    for table in tables:
        assert table.count("<th>method</th>") == 1 and table.count("</tr>") == 1 + 2  # one header row, 2 methods
        assert "<th>sparseness ↑</th>" in table and "<th>aopc ↑</th>" in table and "<th>selectivity ↓</th>" in table
    assert "<th>mean rank</th>" in tables[1]
    images, _, rows = rendered(tmp_path, "report.html")
    assert rows == 2 * 3 and images == 2  # the curves of aopc and selectivity


def test_cli_evaluate_refuses_unknown_metrics_and_localisation_without_masks(tmp_path):
    run = relprop_cli("evaluate", "demo", "--model", "demo", "--metrics", "accuracy", "--out", tmp_path / "a")
    assert run.returncode == 2 and "unknown metric 'accuracy'" in run.stderr
    run = relprop_cli("evaluate", tmp_path, "--model", "demo", "--metrics", "pointing_game", "--out", tmp_path / "b")
    assert run.returncode == 2 and "need object masks" in run.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_both_randomisation_metrics_share_one_cascade(data):
    model = small_cnn()
    calls = []

    def explain(m, inputs, target):
        calls.append(1)
        return gradient_x_input(m, inputs, target)

    result = evaluate.benchmark(model, data, {"gxi": explain}, ["randomisation", "randomisation_last"], batch_size=5)
    assert len(calls) == 1 + 2  # the explanation (also the cascade's original map), one per randomised layer
    per_layer = evaluate.model_parameter_randomisation(model, data[0], torch.where(
        data[1] >= 0, data[1], model(data[0]).argmax(1)), gradient_x_input).details["per_layer"]
    assert torch.allclose(result.scores["gxi", "randomisation_last"], per_layer[:, -1])
    assert torch.allclose(result.scores["gxi", "randomisation"], per_layer.mean(1))


def test_cli_evaluate_reads_image_folders_and_lists_unreadable_files(tmp_path):
    import numpy as np
    from PIL import Image

    from relprop.demo import generate

    folder = tmp_path / "images"
    folder.mkdir()
    for i, picture in enumerate(generate(2, 5)[0]):
        Image.fromarray((picture.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"s{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    run = relprop_cli("evaluate", folder, "--model", "demo", "--methods", "epsilon", "--metrics", "sparseness,aopc",
                      "--out", tmp_path / "out")
    assert run.returncode == 1, run.stderr
    assert "skipped" in run.stderr and "broken.png" in run.stderr and "on 2 samples" in run.stdout
    assert "aopc: regions of 16x16 pixels (--patch-size)" in run.stderr  # 4x4 is the demo's: 3136 steps at 224x224
    assert (tmp_path / "out" / "scores.csv").read_text().count("\n") == 1 + 2 * 2  # header, 2 metrics x 2 images


def test_methods_by_name_are_reproducible():
    from relprop.evaluate.methods import explainer

    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1])
    smoothgrad = explainer("smoothgrad")
    assert torch.equal(smoothgrad(model, x, target).relevance, smoothgrad(model, x, target).relevance)


def test_a_relprop_run_store_is_evaluated_as_stored_with_the_same_scores_as_explaining_again(tmp_path):
    from relprop import datasets
    from relprop.demo import load

    model = load()
    datasets.run(model, "demo:10", tmp_path / "run.zarr", composite="epsilon", target="label", batch_size=4,
                 progress=False)
    stored = evaluate.StoreBatches(tmp_path / "run.zarr")
    assert len(stored) == 10 and stored.label == "epsilon"
    metrics = ["relevance_mass_accuracy", "pointing_game", "sparseness"]
    calls = []

    def epsilon(model, x, target):  # the store's relevance is used: this runs for no metric above
        calls.append(len(x))
        return evaluate.methods.explainer("epsilon")(model, x, target)

    from_store = evaluate.benchmark(model, stored, {"epsilon": epsilon}, metrics, batch_size=4)
    assert calls == []
    # the same samples, explained again by the benchmark itself
    batches = [evaluate.Batch(b.x, b.label, b.mask, b.ids) for b in stored.batches(4)]
    again = evaluate.benchmark(model, batches, ["epsilon"], metrics, batch_size=4)
    for metric in metrics:
        torch.testing.assert_close(from_store.scores[("epsilon", metric)], again.scores[("epsilon", metric)])


def test_a_store_of_channel_sums_is_refused_with_the_fix(tmp_path):
    from relprop import datasets
    from relprop.demo import load

    datasets.run(load(), "demo:4", tmp_path / "run.zarr", composite="epsilon", keep="channels", progress=False)
    with pytest.raises(ValueError, match="--keep full or float16"):
        evaluate.StoreBatches(tmp_path / "run.zarr")


def test_results_display_themselves_in_a_notebook(data):
    # Jupyter shows _repr_html_: a metric's summary table, and the benchmark's tables without the page around them
    x, labels, masks = data
    result = evaluate.sparseness(x, torch.rand_like(x))
    shown = result._repr_html_()
    assert shown.startswith("<table>") and "sparseness" in shown and f"{result.mean:.4g}" in shown
    assert f"{len(result)} of {len(result)}" in shown
    bench = evaluate.benchmark(small_cnn(), data, {"gxi": gradient_x_input}, ["sparseness", "pointing_game"])
    page, shown = bench.html(), bench._repr_html_()
    assert "<!doctype" in page and "<!doctype" not in shown and "<title>" not in shown
    assert "Mean scores" in shown and "gxi" in shown and "pointing_game" in shown
    assert f"{bench.table().loc['gxi', 'sparseness']:.4g}" in shown
    curve = evaluate.region_perturbation(small_cnn(), x, torch.rand_like(x), labels.clamp(min=0), patch_size=4)
    assert "curve: morf" in curve._repr_html_() and "2 samples" not in curve._repr_html_()
    odd = evaluate.Result("m<1>", torch.tensor([1.0, float("nan")]), False, parameters={"mask": "<b>"})
    assert "m&lt;1&gt;" in odd._repr_html_() and "&lt;b&gt;" in odd._repr_html_() and "1 of 2" in odd._repr_html_()
