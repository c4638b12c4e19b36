"""benchmark(engine="ray"): the same scores, curves and errors as the local engine, with Ray started locally on 2 CPUs."""
import pytest
import torch

from relprop import evaluate
from .models import small_cnn

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=128 * 2 ** 20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def assert_same(ray_result, local_result):
    assert ray_result.errors == local_result.errors
    assert ray_result.scores.keys() == local_result.scores.keys()
    for key, scores in local_result.scores.items():
        assert torch.equal(ray_result.scores[key], scores), key
    assert ray_result.curves.keys() == local_result.curves.keys()
    for key, named in local_result.curves.items():
        assert named.keys() == ray_result.curves[key].keys()
        for name, curve in named.items():
            assert torch.equal(ray_result.curves[key][name], curve), (key, name)


def test_ray_engine_gives_the_local_engines_scores_curves_and_errors_for_tensors(local_ray):
    torch.manual_seed(3)
    x, labels = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, -1])
    arguments = dict(methods=["gradient", "epsilon"], metrics=["pointing_game", "aopc", "faithfulness_correlation",
                                                               "complexity"],
                     batch_size=2, options={"aopc": {"patch_size": 4}, "faithfulness_correlation": {"subset_size": 8,
                                                                                                   "nr_runs": 5}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each one-CPU actor: the same float sums
    try:
        local = evaluate.benchmark(small_cnn(), (x, labels), **arguments)
    finally:
        torch.set_num_threads(threads)
    on_ray = evaluate.benchmark(small_cnn(), (x, labels), engine="ray", workers=2, **arguments)
    assert set(local.errors) == {("gradient", "pointing_game"), ("epsilon", "pointing_game")}  # no masks here
    assert len(local.scores["epsilon", "aopc"]) == 5
    assert_same(on_ray, local)


def test_ray_engine_refuses_data_its_actors_cannot_read_by_batch_number():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="engine='ray' needs data whose batches the actors can read by number"):
        evaluate.benchmark(small_cnn(), [(x, torch.tensor([0, 1]))], ["gradient"], ["complexity"], engine="ray")
    with pytest.raises(ValueError, match="engine must be 'local' or 'ray'"):
        evaluate.benchmark(small_cnn(), (x,), ["gradient"], ["complexity"], engine="dask")


def test_cli_evaluate_with_the_ray_engine_writes_the_local_engines_scores(tmp_path):
    # the CLI hands the actors a model spec (each loads the demo model) and DemoImages (each reads its batches)
    from .test_benchmark import relprop_cli

    arguments = ["evaluate", "demo", "--model", "demo", "--count", "5", "--batch-size", "2", "--methods",
                 "epsilon,gradient", "--metrics", "relevance_mass_accuracy,aopc", "--patch-size", "8"]
    local = relprop_cli(*arguments, "--out", tmp_path / "local")
    on_ray = relprop_cli(*arguments, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert local.returncode == 0 and on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert (tmp_path / "ray" / "scores.csv").read_text() == (tmp_path / "local" / "scores.csv").read_text()
    refused = relprop_cli(*arguments, "--out", tmp_path / "x", "--workers", "2")
    assert refused.returncode == 2 and "go with --engine ray" in refused.stderr
