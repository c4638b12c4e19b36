"""The store layout (version 1) as agreed with the SpRAy and evaluation work, and reading it back."""
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

import relprop.datasets as datasets
from relprop.datasets import store as store_module
from relprop.datasets.store import Shapes

from tests.datasets.helpers import damage_chunks


def make(path, keep="full", count=10, chunk=4, preview=(3, 32, 32), extras=None):
    shapes = Shapes(count, chunk, (3, 32, 32), 4, preview, extras or {})
    store_module.create(path, {"model": "demo", "weights_sha256": None, "method": "lrp", "composite": "epsilon",
                               "parameters": {}, "target": "label", "keep": keep, "data": "demo:10",
                               "class_names": ["a", "b", "c", "d"]}, shapes, keep)
    return datasets.open_store(path)


@pytest.mark.parametrize("keep, shape, dtype", [("full", (10, 3, 32, 32), "float32"),
                                                ("float16", (10, 3, 32, 32), "float16"),
                                                ("channels", (10, 32, 32), "float32")])
def test_new_store_has_the_agreed_arrays_chunked_by_samples(tmp_path, keep, shape, dtype):
    opened = make(tmp_path / "s.zarr", keep, extras={"mask": ((32, 32), "bool")})
    expected = {"relevance": (shape, dtype), "output": ((10, 4), "float32"), "label": ((10,), "int64"),
                "target": ((10,), "int64"), "explained": ((10,), "float32"), "delta": ((10,), "float32"),
                "preview": ((10, 3, 32, 32), "uint8"), "done": ((10,), "bool"), "failed": ((10,), "bool"),
                "extra/mask": ((10, 32, 32), "bool")}
    for name, (array_shape, array_dtype) in expected.items():
        array = opened[name]
        assert array.shape == array_shape and str(array.dtype) == array_dtype, name
        assert array.chunks == (4, *array_shape[1:]), name  # whole samples per chunk: writers never share a file
    assert opened["id"].shape == (10,) and opened["id"][0] == ""
    assert opened.arrays() == sorted([*expected, "id", "checksum"])  # checksum: one row per chunk
    metadata = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert metadata["zarr_format"] == 3
    attributes = opened.attrs
    assert attributes["relprop_store"] == 1 and attributes["count"] == 10 and attributes["chunk"] == 4
    assert attributes["input_shape"] == [3, 32, 32] and attributes["classes"] == 4 and attributes["skipped"] == []
    assert {"relprop_version", "torch_version", "created", "model", "weights_sha256", "method", "composite",
            "parameters", "target", "keep", "data", "class_names"} <= set(attributes)
    assert not opened.done.any() and np.isnan(opened["output"][0]).all() and opened["label"][0] == -1


def test_creation_leaves_no_half_made_store_behind(tmp_path):
    make(tmp_path / "s.zarr")
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # the staging folder was renamed into place


def test_chunks_yields_only_the_done_chunks(tmp_path):
    opened = make(tmp_path / "s.zarr")
    group = datasets.open_store(tmp_path / "s.zarr", mode="r+").group
    group["label"][4:8] = np.arange(4)
    values = {name: group[name][4:8] for name in store_module.checked_names(group)}
    group["checksum"][1] = store_module.chunk_checksums(group, values)  # as a run writes it, before the done flags
    group["done"][4:8] = True
    found = list(opened.chunks(("label",)))
    assert [(start, stop) for start, stop, _ in found] == [(4, 8)]
    assert found[0][2]["label"].tolist() == [0, 1, 2, 3]
    assert len(list(opened.chunks(("label",), only_done=False))) == 3
    assert not opened.complete


def test_done_flags_cut_by_power_loss_count_as_not_done(tmp_path):
    opened = make(tmp_path / "s.zarr")
    opened = datasets.open_store(tmp_path / "s.zarr", mode="r+")
    opened.group["done"][:] = True
    (tmp_path / "s.zarr" / "done" / "c" / "1").write_bytes(b"\x00\x01")  # a truncated chunk file
    assert opened.done.tolist() == [True] * 4 + [False] * 4 + [True] * 2


def test_differences_name_each_attribute_that_differs_with_the_argument_that_sets_it():
    stored = {**dict.fromkeys(store_module.IDENTITY), "model": "demo", "composite": "epsilon",
              "parameters": {"epsilon": 0.25}, "count": 10, "input_shape": [3, 32, 32], "mean": [0.5, 0.5, 0.5]}
    wanted = dict(stored, composite="epsilon_plus_flat", input_shape=(3, 32, 32), mean=(0.4, 0.5, 0.5))
    assert store_module.differences(stored, wanted) == [
        "composite (--composite): the store has 'epsilon', this run 'epsilon_plus_flat'",
        "mean (--mean): the store has [0.5, 0.5, 0.5], this run (0.4, 0.5, 0.5)"]


def test_open_store_refuses_folders_that_are_not_stores(tmp_path):
    with pytest.raises(datasets.StoreError, match="not a relprop store"):
        datasets.open_store(tmp_path)
    opened = make(tmp_path / "s.zarr")
    with pytest.raises(KeyError, match="no array 'heatmap'"):
        opened["heatmap"]


def test_remove_deletes_stores_and_refuses_other_folders(tmp_path):
    make(tmp_path / "s.zarr")
    store_module.remove(tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(datasets.StoreError, match="deletes only stores it wrote"):
        store_module.remove(tmp_path / "mine")


def test_a_second_writer_of_a_store_is_refused_until_the_first_lets_go(tmp_path):
    path = tmp_path / "run.zarr"
    with store_module.writing(path):
        with pytest.raises(store_module.StoreError, match=rf"run.zarr is being written by relprop \(pid {os.getpid()}"):
            with store_module.writing(path):
                pass
    with store_module.writing(path):  # released, and the lock file gone with it
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished demo store of 20 samples in chunks of 8 (the last chunk short), kept untouched."""
    path = tmp_path_factory.mktemp("finished") / "run.zarr"
    datasets.run("demo", "demo:20", path, batch_size=4, chunk=8, progress=False)
    return path


def test_every_chunk_file_carries_a_crc32c_and_every_done_chunk_a_checksum_row(finished):
    opened = datasets.open_store(finished)
    for name in opened.arrays():
        assert [codec.to_dict()["name"] for codec in opened[name].metadata.codecs][-1] == "crc32c", name
    checksums = opened["checksum"]
    assert checksums.shape == (3, len(checksums.attrs["arrays"])) and "done" not in checksums.attrs["arrays"]
    import google_crc32c  # the independent reference: CRC32C of the bytes of the values as read back
    column = checksums.attrs["arrays"].index("relevance")
    for row, start in enumerate(range(0, 20, 8)):
        values = np.ascontiguousarray(opened["relevance"][start:start + 8])
        assert checksums[row, column] == google_crc32c.value(values.tobytes())
    assert store_module.verify(opened.group) == []


def test_verify_names_each_flipped_truncated_or_missing_chunk_and_readers_refuse_them(finished, tmp_path):
    path = tmp_path / "run.zarr"
    shutil.copytree(finished, path)
    damaged = damage_chunks(path)
    opened = datasets.open_store(path)
    found = store_module.verify(opened.group)
    assert [(damage.array, damage.start) for damage in found] == damaged
    assert "unreadable" in str(found[1]) and "do not match their checksum" in str(found[0])
    with pytest.raises(datasets.StoreError, match=r"samples 8..15, array relevance: unreadable"):
        list(opened.chunks(("relevance",)))
    with pytest.raises(datasets.StoreError, match=r"samples 0..7, array label: its values do not match"):
        opened.rows("label", [1, 9])
    assert opened.rows("label", [10, 9]).tolist() == datasets.open_store(finished).rows("label", [10, 9]).tolist()


def test_analyses_read_through_the_store_refusing_a_damaged_chunk_naming_it_and_reading_the_intact_ones(tmp_path):
    from relprop.analysis import spray

    finished, damaged = tmp_path / "finished.zarr", tmp_path / "damaged.zarr"
    datasets.run("demo", "demo:20", finished, batch_size=4, chunk=8, progress=False)
    shutil.copytree(finished, damaged)
    damage_chunks(damaged)
    opened = datasets.open_store(damaged)
    # a StoreError is a ValueError: the analyses have always reported a damaged store as one
    with pytest.raises(ValueError, match=r"samples 0..7, array label: its values do not match their checksum"):
        store_module.classes_of(opened.group)
    with pytest.raises(datasets.StoreError, match=r"samples 8..15, array relevance: unreadable .*relprop verify"):
        list(opened.read_chunks("relevance", np.arange(20)))
    with pytest.raises(ValueError, match=r"samples 0..7, array label"):
        spray.run(damaged, [0], progress=lambda text: None)
    intact = [block for _, block in opened.read_chunks("relevance", np.arange(16, 20))]
    expected = datasets.open_store(finished)["relevance"][16:20]
    assert np.asarray(intact[0]).tobytes() == np.asarray(expected).tobytes()
    assert datasets.open_store(finished).ready.tolist() == [True] * 20


def test_a_path_without_a_store_is_a_store_error_and_a_missing_file_for_every_reader(tmp_path):
    from relprop.analysis import spray

    for read in (datasets.open_store, spray.run):
        with pytest.raises(datasets.StoreError, match="is not a relprop store .*`relprop run`") as caught:
            read(tmp_path / "missing.zarr")
        assert isinstance(caught.value, FileNotFoundError)


def test_open_for_run_creates_then_resumes_with_what_is_left_and_refuses_other_arguments(tmp_path):
    path = tmp_path / "s.zarr"
    attributes = {"model": "demo", "weights_sha256": None, "model_sha256": "0" * 64, "dtype": "float32",
                  "method": "lrp", "composite": "epsilon", "parameters": {}, "target": "label", "keep": "full",
                  "data": "demo:10", "count": 10, "size": None, "mean": None, "std": None, "class_map": None,
                  "input_shape": [3, 32, 32], "classes": 4, "class_names": None}
    shapes = Shapes(10, 4, (3, 32, 32), 4, (3, 32, 32), {"mask": ((32, 32), "bool")})
    opened, remaining = store_module.Store.open_for_run(path, attributes, shapes)
    assert remaining == [0, 4, 8] and opened.shapes.chunk == 4 and list(opened.shapes.extras) == ["mask"]
    (path / "relevance" / "c" / "0.partial").parent.mkdir(parents=True, exist_ok=True)
    (path / "relevance" / "c" / "0.partial").write_bytes(b"cut short")
    again, remaining = store_module.Store.open_for_run(path, attributes, replace(shapes, chunk=5))
    assert remaining == [0, 4, 8] and again.chunk == 4  # resumed: its own chunking kept (done chunks: below)
    assert not list(path.rglob("*.partial"))
    with pytest.raises(datasets.StoreError, match=r"made with other arguments.*composite \(--composite\): the store "
                                                  r"has 'epsilon', this run 'gamma'"):
        store_module.Store.open_for_run(path, {**attributes, "composite": "gamma"}, shapes)
    fresh, remaining = store_module.Store.open_for_run(path, {**attributes, "composite": "gamma"}, shapes,
                                                       overwrite=True)
    assert remaining == [0, 4, 8] and fresh.attrs["composite"] == "gamma"


def test_open_for_run_marks_a_damaged_done_chunk_not_done_and_names_it(tmp_path):
    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:20", path, batch_size=4, chunk=8, progress=False)
    (path / "label" / "c" / "0").unlink()  # Zarr alone would read samples 0..7's labels as fill values
    attributes = dict(datasets.open_store(path).attrs)
    notes = []
    opened, remaining = store_module.Store.open_for_run(path, attributes, datasets.open_store(path).shapes,
                                                        note=notes.append)
    assert remaining == [0] and not opened.done[:8].any() and opened.done[8:].all()  # the intact ones kept
    assert notes == [f"{path}: samples 0..7, array label: {store_module.MISMATCH}; explaining this chunk again"]
