import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

import relprop
from relprop.concepts import conditional, maximise, reference_heatmaps
from relprop.datasets import open_store, run
from relprop.datasets.sources import Demo
from relprop.demo.model import ShapeNet
from tests.datasets.conftest import DATASET_FILE
from tests.datasets.helpers import kill_once
from tests.models import with_biases

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_run(tmp_path):
    torch.manual_seed(0)
    model = with_biases(ShapeNet()).eval()
    source = Demo(count=10)
    store = tmp_path / "run.zarr"
    run(model, source, store, batch_size=3, chunk=4, progress=False)
    return model, source, store


def brute_force(model, source, layer, store):
    """Every sample's channel relevance (sum) and activation (max), one plain LRP call per sample."""
    targets = open_store(store)["target"][:]
    lrp = relprop.LRP(model, "epsilon_plus_flat")
    sums, peaks = [], []
    for i in range(len(source)):
        x = source.read(i).x[None]
        sums.append(lrp(x, int(targets[i]), record=[layer]).layers[layer][0].sum((1, 2)))
        with torch.no_grad():
            peaks.append(model.features[:int(layer.split(".")[1]) + 1](x)[0].amax((1, 2)))
    return torch.stack(sums).numpy(), torch.stack(peaks).numpy(), targets


def test_top_k_per_channel_equals_a_brute_force_pass(small_run):
    model, source, store = small_run
    found = maximise(store, ["features.6", "features.8"], k=3, model=model, source=source, batch_size=4)
    for layer in ("features.6", "features.8"):
        sums, peaks, targets = brute_force(model, source, layer, store)
        refs = found[layer]
        expected = np.argsort(-sums, axis=0, kind="stable")[:3].T
        np.testing.assert_array_equal(np.sort(refs.relevance_index, 1), np.sort(expected, 1))
        np.testing.assert_allclose(refs.relevance_value, np.take_along_axis(sums.T, expected, 1), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(refs.activation_value, -np.sort(-peaks.T, 1)[:, :3], rtol=1e-5, atol=1e-6)
        for c in range(refs.class_relevance.shape[0]):
            chosen = targets == c
            assert refs.class_count[c] == chosen.sum()
            if chosen.any():
                np.testing.assert_allclose(refs.class_relevance[c], sums[chosen].mean(0), rtol=1e-4, atol=1e-6)
        stored = open_store(store)
        np.testing.assert_allclose(stored[f"concepts/{layer}/relevance"][:], sums, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(stored[f"concepts/{layer}/relevance_index"][:], refs.relevance_index)


def test_an_interrupted_pass_resumes_the_missing_chunks_only(small_run, monkeypatch):
    model, source, store = small_run
    first = maximise(store, "features.6", k=2, model=model, source=source)
    group = open_store(store, "r+").group
    group["concepts/features.6/done"][4:8] = False  # as if killed before the second chunk was marked
    group["concepts/features.6/relevance"][4:8] = np.nan
    reads = []
    read = Demo.read
    monkeypatch.setattr(Demo, "read", lambda self, i: reads.append(i) or read(self, i))
    again = maximise(store, "features.6", k=2, model=model, source=source)
    assert sorted(reads) == [4, 5, 6, 7]
    np.testing.assert_array_equal(again["features.6"].relevance_index, first["features.6"].relevance_index)


def test_reference_heatmaps_are_the_conditional_heatmaps_of_each_sample(small_run):
    model, source, store = small_run
    refs = maximise(store, "features.6", k=2, model=model, source=source)["features.6"]
    targets = open_store(store)["target"][:]
    lrp = relprop.LRP(model, "epsilon_plus_flat")
    samples = refs.relevance_index[5]
    heatmaps = reference_heatmaps(lrp, source, "features.6", 5, samples, targets[samples])
    for position, i in enumerate(samples):
        alone = conditional(lrp, source.read(int(i)).x[None], int(targets[i]), {"features.6": 5}).relevance[0, 0]
        torch.testing.assert_close(heatmaps[position], alone, atol=1e-7, rtol=1e-5)


def test_bad_layers_and_empty_stores_are_refused(small_run, tmp_path):
    model, source, store = small_run
    with pytest.raises(ValueError, match="did you mean 'features.6'"):
        maximise(store, "features.66", model=model, source=source)
    group = open_store(store, "r+").group
    group["done"][:] = False
    with pytest.raises(ValueError, match="no explained samples"):
        maximise(store, "features.6", model=model, source=source)
    assert "concepts" not in group


def test_the_receptive_field_of_a_second_convolution_is_five_by_five_around_its_position():
    from relprop.concepts.maximisation import receptive_field
    from tests.concepts.nets import vgg

    model = vgg()
    x = torch.randn(1, 3, 16, 16)
    lrp = relprop.LRP(model)
    relevance = lrp(x, 1, record=["2"]).layers["2"][0, 3]
    row, column = np.unravel_index(int(relevance.argmax()), (16, 16))
    rows, columns = receptive_field(lrp, x, 1, "2", 3)  # two 3x3 convolutions: +-2 pixels, clipped at the border
    assert (rows.start, rows.stop) == (max(row - 2, 0), min(row + 3, 16))
    assert (columns.start, columns.stop) == (max(column - 2, 0), min(column + 3, 16))


def test_cropped_reference_heatmaps_are_the_heatmaps_cut_to_the_receptive_field(small_run):
    from relprop.concepts.maximisation import receptive_field

    model, source, store = small_run
    targets = open_store(store)["target"][:]
    lrp = relprop.LRP(model, "epsilon_plus_flat")
    full = reference_heatmaps(lrp, source, "features.2", 1, [0, 3], targets[[0, 3]])
    cropped = reference_heatmaps(lrp, source, "features.2", 1, [0, 3], targets[[0, 3]], crop=True)
    for position, i in enumerate([0, 3]):
        region = receptive_field(lrp, source.read(i).x[None], int(targets[i]), "features.2", 1)
        assert cropped[position].shape[-2:] == (region[0].stop - region[0].start, region[1].stop - region[1].start)
        torch.testing.assert_close(cropped[position], full[position][(...,) + region])


def test_the_ray_engine_writes_the_same_arrays_as_the_local_one(small_run, tmp_path):
    pytest.importorskip("ray")
    import shutil

    model, source, store = small_run
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    local = maximise(store, ["features.6"], k=2, model=model, source=source)["features.6"]
    distributed = maximise(copy, ["features.6"], k=2, model=model, source=source, engine="ray", workers=2)
    for name in ("relevance", "activation", "done"):
        np.testing.assert_array_equal(open_store(copy)[f"concepts/features.6/{name}"][:],
                                      open_store(store)[f"concepts/features.6/{name}"][:])
    np.testing.assert_array_equal(distributed["features.6"].relevance_index, local.relevance_index)


def relprop_command(*args, delay="0", stop_at=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", SHAPES_DELAY=delay)
    env.pop("SHAPES_STOP_AT", None)
    if stop_at is not None:  # the data set holds at sample stop_at until the test kills the pass (no race)
        env["SHAPES_STOP_AT"] = str(stop_at)
    return subprocess.Popen([sys.executable, "-m", "relprop", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def concept_chunks_done(path, layer) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(path), mode="r")[f"concepts/{layer}/done"][:]).sum())
    except Exception:  # the arrays are not created yet
        return 0


def kill_when_done(process, path, layer, at_least: int) -> tuple[int, int]:
    """SIGKILL the pass once at_least samples are done; returns that count and the fewest seen done while it ran."""
    seen = []

    def progress():
        seen.append(concept_chunks_done(path, layer))
        return seen[-1]

    return kill_once(process, progress, at_least), min(seen)


@pytest.mark.slow
def test_maximisation_killed_twice_then_resumed_equals_an_uninterrupted_pass_bit_for_bit(tmp_path):
    data = tmp_path / "shapes_data.py"
    data.write_text(DATASET_FILE)
    explained = relprop_command("run", f"{data}:slow", "--model", "demo", "--store", tmp_path / "run.zarr",
                                "--batch-size", "4", "--chunk", "4")
    out, err = explained.communicate(timeout=120)
    assert explained.returncode == 1, err  # sample 5 is unreadable on purpose
    shutil.copytree(tmp_path / "run.zarr", tmp_path / "clean.zarr")
    layer = "features.6"
    arguments = ["concepts", "--layer", layer, "--top", "3", "--batch-size", "2"]
    clean = relprop_command(*arguments, "--store", tmp_path / "clean.zarr", "--out", tmp_path / "clean-atlas")
    store = tmp_path / "run.zarr"
    first, _ = kill_when_done(relprop_command(*arguments, "--store", store, "--out", tmp_path / "atlas",
                                              stop_at=8), store, layer, 8)
    second, fewest = kill_when_done(relprop_command(*arguments, "--store", store, "--out", tmp_path / "atlas",
                                                    stop_at=20), store, layer, 20)
    assert first == 8 and second == 20  # each pass was cut in the middle, where its gate held it
    assert fewest >= first  # the second went on from the first: the chunks it had finished were kept, not redone
    resumed = relprop_command(*arguments, "--store", store, "--out", tmp_path / "atlas")
    for process in (resumed, clean):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    groups = [zarr.open_group(str(path), mode="r")[f"concepts/{layer}"] for path in (store, tmp_path / "clean.zarr")]
    names = [sorted(group.array_keys()) for group in groups]
    assert names[0] == names[1]
    assert {"relevance", "activation", "done", "relevance_index", "class_relevance"} <= set(names[0])
    for name in names[0]:  # per-sample arrays, done flags, top-k lists and class statistics alike
        values = [np.asarray(group[name][:]) for group in groups]
        assert values[0].dtype == values[1].dtype and values[0].shape == values[1].shape, name
        assert values[0].tobytes() == values[1].tobytes(), name
    assert dict(groups[0].attrs) == dict(groups[1].attrs)
    assert np.asarray(groups[0]["done"][:]).all()  # every chunk done, the unreadable sample's row included
    pages = [(tmp_path / folder / "index.html").read_text().replace(str(path), "STORE")
             for folder, path in (("atlas", store), ("clean-atlas", tmp_path / "clean.zarr"))]
    assert pages[0] == pages[1]  # the same reference samples, channel by channel


def test_each_chunk_s_arrays_reach_the_disk_before_its_done_flags(small_run, monkeypatch):
    from relprop.datasets import store as store_module

    model, source, store = small_run
    synced, real = [], store_module._fsync

    def spy(path, flags):  # when a chunk's file is synced, its done flags must still be unset
        relative = os.path.relpath(path, store).split(os.sep)
        if relative[:2] == ["concepts", "features.3"] and len(relative) == 6:
            chunk = int(relative[4])
            done = zarr.open_group(str(store), mode="r")["concepts/features.3/done"][chunk * 4:chunk * 4 + 4]
            synced.append((relative[2], chunk, bool(done.any())))
        return real(path, flags)

    monkeypatch.setattr(store_module, "_fsync", spy)
    maximise(store, ["features.3"], model=model, source=source)
    assert sorted(synced) == [(array, chunk, False) for array in ("activation", "relevance") for chunk in range(3)]


def test_a_store_made_with_a_composite_object_is_maximised_with_that_composite(tmp_path):
    # Its name is not in the store (the class name and rules are): a built-in composite with the recorded rules is
    # found by them, any other must be given, and is checked; before, every such store failed with "unknown
    # composite 'EpsilonGammaBox'"
    torch.manual_seed(0)
    model = with_biases(ShapeNet()).eval()
    source = Demo(count=6)
    built_in, changed = relprop.composites.get("epsilon_gamma_box"), relprop.composites.get("epsilon_gamma_box",
                                                                                            gamma=0.5)
    by_name, by_object, other = tmp_path / "name.zarr", tmp_path / "object.zarr", tmp_path / "other.zarr"
    run(model, source, by_name, composite="epsilon_gamma_box", batch_size=3, progress=False)
    run(model, source, by_object, composite=built_in, batch_size=3, progress=False)
    run(model, source, other, composite=changed, batch_size=3, progress=False)
    expected = maximise(by_name, "features.6", k=2, model=model, source=source)["features.6"]
    found = maximise(by_object, "features.6", k=2, model=model, source=source)["features.6"]
    np.testing.assert_allclose(found.relevance_value, expected.relevance_value, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="given as an object .*pass the same composite"):
        maximise(other, "features.6", k=2, model=model, source=source)
    with pytest.raises(ValueError, match="other rules than the one"):
        maximise(other, "features.6", k=2, model=model, source=source, composite=built_in)
    given = maximise(other, "features.6", k=2, model=model, source=source, composite=changed)["features.6"]
    targets = open_store(other)["target"][:]
    lrp = relprop.LRP(model, changed)
    sums = np.stack([lrp(source.read(i).x[None], int(targets[i]), record=["features.6"]).layers["features.6"][0]
                     .sum((1, 2)).numpy() for i in range(len(source))])
    np.testing.assert_allclose(given.relevance_value, -np.sort(-sums.T, 1)[:, :2], rtol=1e-4, atol=1e-6)
    assert not np.allclose(given.relevance_value, expected.relevance_value, rtol=1e-3)
    again = maximise(by_name, "features.6", k=2, model=model, source=source, composite=built_in)["features.6"]
    np.testing.assert_allclose(again.relevance_value, expected.relevance_value, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="other rules than the one"):
        maximise(by_name, "features.6", k=2, model=model, source=source, composite=changed)
