"""relprop.datasets.run: resuming after kills, refusing other arguments, bad input, the Python API."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import relprop.datasets as datasets
from relprop.datasets import sources, store as store_module
from relprop.demo import load

from tests.datasets.helpers import assert_same_store, damage_chunks, kill_once, read_store


def cli(*args, stop_at=None):
    """`relprop run` in a subprocess; with stop_at=N it holds when it reads sample N (see conftest's gate)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", SHAPES_DELAY="0")
    env.pop("SHAPES_STOP_AT", None)
    if stop_at is not None:
        env["SHAPES_STOP_AT"] = str(stop_at)
    return subprocess.Popen([sys.executable, "-m", "relprop", "run", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done_count(path) -> int:
    try:
        group = datasets.open_store(path)
        return int(group.done.sum())
    except Exception:  # not created yet
        return 0


def kill_when(process, path, at_least: int, timeout: float = 90.0) -> int:
    """SIGKILL the run once at least `at_least` samples are done; returns how many were done."""
    return kill_once(process, lambda: done_count(path), at_least, timeout)


def test_run_killed_twice_then_resumed_equals_an_uninterrupted_run_bit_for_bit(dataset_file, tmp_path):
    arguments = [f"{dataset_file}:slow", "--model", "demo", "--batch-size", "2", "--chunk", "4", "--keep", "float16"]
    clean = cli(*arguments, "--store", tmp_path / "clean.zarr")
    interrupted = tmp_path / "interrupted.zarr"
    # each run holds at a gate it cannot pass (sample 12, then 32), so it is killed mid-run however loaded the
    # machine: 8 or 12 samples done by the first, 20 to 32 by the second
    first = kill_when(cli(*arguments, "--store", interrupted, stop_at=12), interrupted, 8)
    second = kill_when(cli(*arguments, "--store", interrupted, stop_at=32), interrupted, first + 12)
    assert first < second < 60  # each run was cut in the middle, the second went on from the first
    resumed = cli(*arguments, "--store", interrupted)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 1, err  # sample 5 is unreadable: listed, skipped, exit code 1
    assert f"({second} were done before)" in out or "were done before" in out
    # an item that cannot be read cannot give its own id, so it is listed by its index
    assert "relprop: skipped 5 (sample 5): sample 5 is broken on purpose" in err
    clean_out, clean_err = clean.communicate(timeout=120)
    assert clean.returncode == 1, clean_err
    assert_same_store(tmp_path / "clean.zarr", interrupted)
    finished = datasets.open_store(interrupted)
    assert finished.complete and finished.skipped == [
        {"index": 5, "id": "5", "error": "sample 5 is broken on purpose"}]
    assert finished["id"][4:7].tolist() == ["shape-004", "5", "shape-006"]
    assert not list(interrupted.rglob("*.partial"))


def test_a_second_run_on_a_store_being_written_is_refused_and_a_killed_runs_lock_goes_with_it(dataset_file, tmp_path):
    arguments = [f"{dataset_file}:slow", "--model", "demo", "--batch-size", "2", "--chunk", "4"]
    store = tmp_path / "run.zarr"
    first = cli(*arguments, "--store", store, stop_at=8)  # holds the lock at sample 8 until killed: a handshake
    try:
        kill_once(first, lambda: done_count(store), 4, kill=False)  # wait until it is writing (it cannot finish)
        second = cli(*arguments, "--store", store)
        out, err = second.communicate(timeout=120)
        assert second.returncode != 0 and f"is being written by relprop (pid {first.pid} on" in err, err
        assert first.poll() is None, first.communicate()  # untouched by the refusal
    finally:
        if first.poll() is None:  # SIGKILL, as a crash or power loss would stop it
            first.kill()
            first.wait()
    resumed = cli(*arguments, "--store", store)  # the kernel dropped the killed run's lock
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 1 and "were done before" in out, err  # sample 5 is unreadable on purpose
    assert datasets.open_store(store).complete


def test_chunk_is_not_marked_done_when_the_run_stops_between_its_data_and_its_done_flags(tmp_path, monkeypatch):
    model = load()
    datasets.run(model, "demo:12", tmp_path / "clean.zarr", batch_size=4, chunk=4, progress=False)
    calls = []
    original = datasets.work.ChunkWorker.write

    def write_then_die(self, chunk, before_done=None):
        def die(chunk):
            if before_done is not None:
                before_done(chunk)
            calls.append(chunk.start)
            if chunk.start == 4:
                raise KeyboardInterrupt  # stands for a kill after the arrays, before the done flags
        original(self, chunk, die)

    monkeypatch.setattr(datasets.work.ChunkWorker, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        datasets.run(model, "demo:12", tmp_path / "cut.zarr", batch_size=4, chunk=4, workers=0, progress=False)
    done = datasets.open_store(tmp_path / "cut.zarr").done
    assert done.tolist() == [True] * 4 + [False] * 8
    relevance_before = datasets.open_store(tmp_path / "cut.zarr")["relevance"][:4]
    monkeypatch.setattr(datasets.work.ChunkWorker, "write", original)
    summary = datasets.run(model, "demo:12", tmp_path / "cut.zarr", batch_size=4, chunk=4, progress=False)
    assert summary.already_done == 4 and summary.explained == 8
    assert_same_store(tmp_path / "clean.zarr", tmp_path / "cut.zarr")
    assert np.array_equal(datasets.open_store(tmp_path / "cut.zarr")["relevance"][:4], relevance_before)


def test_resuming_with_other_arguments_is_refused_naming_each_difference(tmp_path):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:8", path, batch_size=4, progress=False)
    before = read_store(path)
    with pytest.raises(datasets.StoreError) as error:
        datasets.run("demo", "demo:8", path, composite="epsilon", target="predicted", batch_size=4, progress=False)
    message = str(error.value)
    assert "composite (--composite): the store has 'epsilon_plus_flat', this run 'epsilon'" in message
    assert "target (--target): the store has 'label', this run 'predicted'" in message
    assert "--overwrite" in message
    after = read_store(path)
    assert all(np.array_equal(before[name], after[name]) for name in before if name != "id")


def unfinished(path):
    """Mark the store's last chunk not done, as a run killed before it would have left it."""
    group = store_module.open_store(path, mode="r+").group
    group["done"][-4:] = False


def in_float64(model, items):
    return model.double(), [(x.double(), label) for x, label in items]


def with_another_bias(model, items):
    model.classifier.bias.data.add_(0.5)
    return model, items


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "unfinished"])
@pytest.mark.parametrize("change, named", [
    (in_float64, "dtype (the model's dtype): the store has 'float32', this run 'float64'"),
    (with_another_bias, "model_sha256 (the model's weights): the store has"),
], ids=["dtype", "weights"])
def test_a_python_model_with_other_numbers_is_refused_on_resume(tmp_path, finished, change, named):
    path = tmp_path / "run.zarr"
    items = demo_items(8)
    datasets.run(load(), Listed(items), path, batch_size=4, chunk=4, progress=False)
    if not finished:
        unfinished(path)
    before = read_store(path)
    model, items = change(load(), items)
    with pytest.raises(datasets.StoreError, match="give the store's values to resume it") as error:
        datasets.run(model, Listed(items), path, batch_size=4, chunk=4, progress=False)
    assert named in str(error.value)
    after = read_store(path)
    assert all(np.array_equal(before[name], after[name]) for name in before if name != "id")


def test_a_store_without_the_newer_records_is_refused_saying_an_older_relprop_made_it(tmp_path):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:4", path, progress=False)
    group = store_module.open_store(path, mode="r+").group
    group.attrs.update({key: value for key, value in group.attrs.items() if key != "mean"})
    attributes = dict(group.attrs)
    del attributes["mean"]
    group.attrs.put(attributes)
    with pytest.raises(datasets.StoreError, match=r"mean \(--mean\): not recorded in the store \(an older relprop"):
        datasets.run("demo", "demo:4", path, progress=False)


def test_a_composite_object_with_other_parameters_is_refused_on_resume_and_the_same_one_resumes(tmp_path):
    from relprop import composites

    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:8", path, composite=composites.EpsilonPlusFlat(epsilon=0.25), batch_size=4, chunk=4,
                 progress=False)
    unfinished(path)
    before = read_store(path)
    with pytest.raises(datasets.StoreError, match=r"composite_rules \(the rules of a composite given as an object\)"
                       r": the store has .*epsilon=0\.25.*this run .*epsilon=0\.5"):
        datasets.run("demo", "demo:8", path, composite=composites.EpsilonPlusFlat(epsilon=0.5), batch_size=4,
                     chunk=4, progress=False)
    after = read_store(path)
    assert all(np.array_equal(before[name], after[name]) for name in before if name != "id")
    summary = datasets.run("demo", "demo:8", path, composite=composites.EpsilonPlusFlat(epsilon=0.25), batch_size=4,
                           chunk=4, progress=False)
    assert summary.explained == 4


def test_a_composite_s_tensor_bounds_are_recorded_whole_not_abbreviated(tmp_path):
    from relprop import composites
    from relprop.datasets.pipeline import Settings, _composite_rules

    low = torch.zeros(3, 32, 32)
    changed = low.clone()
    changed[1, 16, 16] = -0.5  # deep inside a tensor that repr would abbreviate
    first, second = (_composite_rules(Settings("lrp", composites.EpsilonGammaBox(bounds, 1.0), {}, "label", "full",
                                               4), None) for bounds in (low, changed))
    assert first.startswith("sha256:") and first != second
    assert _composite_rules(Settings("lrp", "epsilon_plus_flat", {}, "label", "full", 4), None) is None
    named = Settings("lrp", composites.EpsilonPlusFlat(), {}, "label", "full", 4)  # as relprop run passes it
    assert _composite_rules(named, "epsilon_plus_flat") is None


def test_a_store_from_before_a_newer_record_resumes_when_this_run_leaves_that_record_empty(tmp_path):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:8", path, batch_size=4, chunk=4, progress=False)
    unfinished(path)
    group = store_module.open_store(path, mode="r+").group
    attributes = dict(group.attrs)
    assert attributes.pop("composite_rules") is None  # a composite by name has no object to record
    group.attrs.put(attributes)
    assert datasets.run("demo", "demo:8", path, batch_size=4, chunk=4, progress=False).explained == 4


def test_chunk_given_to_a_store_with_other_chunking_says_the_store_keeps_its_own(tmp_path, capsys):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:8", path, batch_size=4, chunk=4, progress=False)
    unfinished(path)
    capsys.readouterr()
    summary = datasets.run("demo", "demo:8", path, batch_size=4, chunk=8, progress=False)
    assert summary.explained == 4 and datasets.open_store(path).chunk == 4
    err = capsys.readouterr().err
    assert "relprop: note: " in err and "keeps its chunking of 4 samples per chunk" in err and "--chunk 8" in err
    datasets.run("demo", "demo:8", path, batch_size=4, chunk=4, progress=False)  # the store's own: no note
    assert "note" not in capsys.readouterr().err


def test_method_parameters_reach_the_method_and_are_recorded(tmp_path):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:2", path, method="integrated_gradients", parameters={"steps": 3}, progress=False)
    opened = datasets.open_store(path)
    assert opened.attrs["parameters"] == {"steps": 3}
    x = torch.stack([sources.Demo(2).read(i).x for i in range(2)])
    labels = torch.tensor([sources.Demo(2).read(i).label for i in range(2)])
    expected = relprop_attribution("integrated_gradients", steps=3)(load(), x, labels)
    assert np.allclose(opened["relevance"][:], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(datasets.StoreError, match=r"parameters \(--param\): the store has \{'steps': 3\}"):
        datasets.run("demo", "demo:2", path, method="integrated_gradients", parameters={"steps": 5}, progress=False)


def relprop_attribution(name, **parameters):
    from relprop import attribution

    return lambda model, x, target: attribution.BY_NAME[name](model, **parameters)(x, target).relevance.numpy()


def test_a_composite_with_another_method_or_a_bad_method_parameter_is_refused_before_any_store(tmp_path):
    with pytest.raises(ValueError, match="a composite is LRP's; method 'gradient' takes none"):
        datasets.run("demo", "demo:2", tmp_path / "run.zarr", method="gradient", composite="epsilon", progress=False)
    with pytest.raises(datasets.RunError, match="method integrated_gradients: .*bogus"):
        datasets.run("demo", "demo:2", tmp_path / "run.zarr", method="integrated_gradients",
                     parameters={"bogus": 1}, progress=False)
    assert not (tmp_path / "run.zarr").exists()


def test_overwrite_starts_over_with_the_new_arguments(tmp_path):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:8", path, batch_size=4, progress=False)
    summary = datasets.run("demo", "demo:8", path, composite="epsilon", batch_size=4, overwrite=True, progress=False)
    assert summary.explained == 8 and summary.already_done == 0
    assert datasets.open_store(path).attrs["composite"] == "epsilon"


def test_resuming_a_finished_store_explains_nothing(tmp_path):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:8", path, batch_size=4, progress=False)
    summary = datasets.run("demo", "demo:8", path, batch_size=4, progress=False)
    assert summary.explained == 0 and summary.already_done == 8 and "nothing to do" in str(summary)


class Listed(torch.utils.data.Dataset):
    """Items given as a list: (x, label) pairs."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def demo_items(count, seed=5):
    demo = datasets.sources.Demo(count, seed=seed)
    return [(sample.x, sample.label) for sample in map(demo.read, range(count))]


def test_labels_out_of_range_stop_the_run_and_keep_the_finished_chunks(tmp_path):
    items = demo_items(8)
    items[6] = (items[6][0], 9)
    path = tmp_path / "run.zarr"
    with pytest.raises(datasets.RunError, match=r"sample 6 \(6\) has label 9 but the model has 4 classes"):
        datasets.run(load(), Listed(items), path, batch_size=4, chunk=4, workers=0, progress=False)
    done = datasets.open_store(path).done
    assert done.tolist() == [True] * 4 + [False] * 4


def test_samples_of_another_shape_are_skipped_with_the_fix_named(tmp_path):
    items = demo_items(6)
    items[2] = (torch.zeros(3, 16, 16), 1)
    summary = datasets.run(load(), Listed(items), tmp_path / "run.zarr", batch_size=4, progress=False)
    assert [entry["index"] for entry in summary.skipped] == [2]
    assert "shape (3, 16, 16) differs from the data set's (3, 32, 32)" in summary.skipped[0]["error"]
    assert "--size" in summary.skipped[0]["error"]
    opened = datasets.open_store(tmp_path / "run.zarr")
    assert opened.failed.tolist() == [False, False, True, False, False, False]
    assert np.isnan(opened["output"][2]).all() and (opened["relevance"][2] == 0).all()
    assert opened["target"][2] == -1 and opened.complete


def test_target_label_on_unlabelled_data_names_predicted_as_the_fix(tmp_path):
    items = [(x, None) for x, _ in demo_items(3)]
    with pytest.raises(datasets.RunError, match="--target predicted"):
        datasets.run(load(), Listed(items), tmp_path / "run.zarr", progress=False)
    summary = datasets.run(load(), Listed(items), tmp_path / "other.zarr", target="predicted", progress=False)
    opened = datasets.open_store(tmp_path / "other.zarr")
    assert summary.explained == 3 and opened["label"][:].tolist() == [-1, -1, -1]
    assert np.array_equal(opened["target"][:], opened["output"][:].argmax(1))


def test_data_set_with_more_classes_than_the_model_is_refused(tmp_path):
    class Many(Listed):
        classes = [f"class{i}" for i in range(10)]

    with pytest.raises(datasets.RunError, match="its 10 class names .* but the model outputs 4"):
        datasets.run(load(), Many(demo_items(2)), tmp_path / "run.zarr", progress=False)
    with pytest.raises(datasets.RunError, match="has 10 classes .* but the model outputs 4"):
        datasets.run(load(), Many(demo_items(2)), tmp_path / "run.zarr", target="predicted", progress=False)
    assert not (tmp_path / "run.zarr").exists()


class Named(Listed):
    classes = ["cats", "dogs"]


def test_class_names_that_cannot_be_the_models_classes_are_refused_for_target_label_naming_both_fixes(tmp_path):
    items = [(x, i % 2) for i, (x, _) in enumerate(demo_items(4))]
    with pytest.raises(datasets.RunError) as error:
        datasets.run(load(), Named(items), tmp_path / "run.zarr", progress=False)
    message = str(error.value)
    assert "its 2 class names (cats, dogs) but the model outputs 4 classes" in message
    assert "--target predicted" in message and "--class-map cats=N,dogs=N" in message
    assert not (tmp_path / "run.zarr").exists()
    datasets.run(load(), Named(items), tmp_path / "predicted.zarr", target="predicted", progress=False)
    opened = datasets.open_store(tmp_path / "predicted.zarr")
    assert opened.class_names == ["cats", "dogs"] and opened["label"][:].tolist() == [0, 1, 0, 1]


def test_class_map_turns_the_data_sets_labels_into_the_models_classes(tmp_path):
    items = [(x, i % 2) for i, (x, _) in enumerate(demo_items(4))]
    datasets.run(load(), Named(items), tmp_path / "run.zarr", class_map={"cats": 3, "dogs": 1}, progress=False)
    opened = datasets.open_store(tmp_path / "run.zarr")
    assert opened["label"][:].tolist() == [3, 1, 3, 1] and opened["target"][:].tolist() == [3, 1, 3, 1]
    assert opened.class_names == ["class-0", "dogs", "class-2", "cats"]
    assert opened.attrs["class_map"] == {"cats": 3, "dogs": 1}


@pytest.mark.parametrize("class_map, message", [
    ({"cats": 3}, "gives no model class for dogs"), ({"cats": 3, "dogs": 1, "cows": 2}, "names cows, which"),
    ({"cats": 3, "dogs": 4}, "maps dogs to 4, but the model's classes are 0..3")])
def test_a_class_map_that_does_not_fit_is_refused_naming_the_problem(tmp_path, class_map, message):
    items = [(x, i % 2) for i, (x, _) in enumerate(demo_items(2))]
    with pytest.raises(datasets.RunError, match=message):
        datasets.run(load(), Named(items), tmp_path / "run.zarr", class_map=class_map, progress=False)
    assert not (tmp_path / "run.zarr").exists()


def test_store_in_a_missing_folder_or_a_file_is_refused_before_any_work(tmp_path):
    with pytest.raises(datasets.StoreError, match="does not exist; create it first"):
        datasets.run("demo", "demo:2", tmp_path / "no" / "such" / "run.zarr", progress=False)
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(datasets.StoreError, match="is a file"):
        datasets.run("demo", "demo:2", tmp_path / "file.zarr", progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(datasets.StoreError, match="not a relprop store"):
        datasets.run("demo", "demo:2", tmp_path / "mine", overwrite=True, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_store_in_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(datasets.StoreError, match="permission denied"):
            datasets.run("demo", "demo:2", locked / "run.zarr", progress=False)
    finally:
        locked.chmod(0o700)


def test_custom_source_registered_by_name_stores_its_ground_truth(tmp_path, monkeypatch):
    class Stripes(sources.Source):
        spec, class_names = "stripes:4", ["circle", "square", "triangle", "cross"]
        extras = {"stripe": ((), "int64")}

        def __len__(self):
            return 4

        def read(self, index):
            pixels = torch.full((3, 32, 32), index / 4)
            return sources.Sample((pixels - 0.5) / 0.25, index % 4, pixels, {"stripe": np.int64(index * 10)})

    monkeypatch.setitem(sources.SOURCES, "stripes", lambda argument, preprocessing: Stripes())
    datasets.run("demo", "stripes", tmp_path / "run.zarr", batch_size=2, progress=False)
    opened = datasets.open_store(tmp_path / "run.zarr")
    assert opened["extra/stripe"][:].tolist() == [0, 10, 20, 30]
    assert opened["id"][:].tolist() == ["0", "1", "2", "3"] and opened.attrs["data"] == "stripes:4"
    assert opened["preview"][:, 0, 0, 0].tolist() == [0, 64, 128, 191]  # round(255 * i / 4)


def test_non_lrp_method_stores_nan_delta_and_no_composite(tmp_path):
    datasets.run("demo", "demo:4", tmp_path / "run.zarr", method="gradient", composite=None, progress=False)
    opened = datasets.open_store(tmp_path / "run.zarr")
    assert opened.attrs["method"] == "gradient" and opened.attrs["composite"] is None
    assert np.isnan(opened["delta"][:]).all()


@pytest.mark.parametrize("bad, message", [
    ({"target": "true"}, "target must be"), ({"keep": "half"}, "keep must be"), ({"engine": "spark"}, "engine must"),
    ({"batch_size": 0}, "batch_size must"), ({"workers": -1}, "workers must"), ({"chunk": 0}, "chunk must")])
def test_invalid_arguments_are_named(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        datasets.run("demo", "demo:2", tmp_path / "run.zarr", progress=False, **bad)
    assert not (tmp_path / "run.zarr").exists()


def test_progress_prints_a_line_per_batch_with_rate_and_eta_when_not_a_terminal(tmp_path, capsys):
    datasets.run("demo", "demo:6", tmp_path / "run.zarr", batch_size=4)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("4/6 samples, ") and "samples/s, ETA " in lines[0]
    assert lines[1].startswith("6/6 samples")


def test_local_runs_never_import_ray(tmp_path):
    code = ("import sys, relprop.datasets as d; d.run('demo', 'demo:2', sys.argv[1], progress=False); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run.zarr")], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert result.returncode == 0, result.stderr


def test_default_chunk_is_whole_batches_of_about_four_mebibytes_of_relevance():
    from relprop.datasets.pipeline import default_chunk

    assert default_chunk(32, "full", (3, 32, 32)) == 32 * 11  # 12 KiB a sample: 341 samples, 10.7 batches
    assert default_chunk(32, "channels", (3, 32, 32)) == 32 * 32
    assert default_chunk(4, "full", (3, 224, 224)) == 8  # 588 KiB a sample
    assert default_chunk(64, "float16", (3, 224, 224)) == 64  # never less than one batch


def test_a_resume_names_and_recomputes_damaged_chunks_and_the_store_ends_bit_identical(tmp_path, capsys):
    untouched, damaged = tmp_path / "untouched.zarr", tmp_path / "damaged.zarr"
    datasets.run("demo", "demo:20", untouched, batch_size=4, chunk=8, progress=False)
    datasets.run("demo", "demo:20", damaged, batch_size=4, chunk=8, progress=False)
    capsys.readouterr()
    named = damage_chunks(damaged)
    summary = datasets.run("demo", "demo:20", damaged, batch_size=4, chunk=8, progress=False)
    notes = capsys.readouterr().err
    for array, start in named:
        assert f"samples {start}..{min(start + 8, 20) - 1}, array {array}:" in notes and "explaining this chunk again" in notes
    assert summary.explained == 20 and summary.already_done == 0
    assert_same_store(untouched, damaged)
    assert store_module.verify(datasets.open_store(damaged).group) == []


def test_chunk_files_and_their_folders_are_synced_before_the_done_flags(tmp_path, monkeypatch):
    import zarr

    path, events = tmp_path / "run.zarr", []
    fsync, setitem = os.fsync, zarr.Array.__setitem__

    def synced(handle):
        events.append(os.readlink(f"/proc/self/fd/{handle}"))
        fsync(handle)

    def written(array, key, value):
        if array.path == "done":
            events.append("done")
        setitem(array, key, value)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(zarr.Array, "__setitem__", written)
    datasets.run("demo", "demo:8", path, batch_size=4, chunk=4, progress=False)
    first_done = events.index("done")
    for name in ("relevance/c/0/0/0/0", "output/c/0/0", "id/c/0", "checksum/c/0/0", "relevance/c/0", "relevance/c"):
        assert str(path / name) in events[:first_done], name
    assert str(path / "relevance/c/1/0/0/0") in events[first_done:]
