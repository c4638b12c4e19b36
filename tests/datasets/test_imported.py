"""Heatmaps from anywhere: from_arrays writes the store layout SpRAy, its report and the ViRelAy export read."""
import h5py
import numpy as np
import pytest

from relprop import datasets
from relprop.analysis import spray, virelay
from relprop.datasets import imported


def planted(count=60, seed=0):
    """Heatmaps (count, 3, 16, 16) in two strategies (relevance top-left or bottom-right), labels 0/1, images."""
    rng = np.random.default_rng(seed)
    relevance = rng.uniform(0, 0.1, (count, 3, 16, 16)).astype(np.float32)
    strategy = np.arange(count) % 3 == 0
    relevance[strategy, :, :5, :5] += 1
    relevance[~strategy, :, 11:, 11:] += 1
    labels = np.zeros(count, np.int64)
    labels[count // 2:] = 1
    images = rng.uniform(0, 1, (count, 3, 16, 16)).astype(np.float32)
    return relevance, labels, images, strategy


def test_from_arrays_writes_every_array_of_the_layout_and_marks_all_done(tmp_path):
    relevance, labels, images, _ = planted()
    output = np.random.default_rng(1).normal(size=(60, 3)).astype(np.float32)
    store = datasets.from_arrays(tmp_path / "run.zarr", relevance, labels, images=images, output=output,
                                 ids=[f"img{i}" for i in range(60)], class_names=["a", "b", "c"], chunk=16)
    assert store.attrs["relprop_store"] == 1 and store.attrs["classes"] == 3 and store.chunk == 16
    assert store.class_names == ["a", "b", "c"] and store.attrs["keep"] == "full"
    np.testing.assert_array_equal(store["relevance"][:], relevance)
    np.testing.assert_array_equal(store["label"][:], labels)
    np.testing.assert_array_equal(store["target"][:], labels)
    np.testing.assert_array_equal(store["output"][:], output)
    np.testing.assert_allclose(store["explained"][:], output[np.arange(60), labels])
    assert list(store["id"][:3]) == ["img0", "img1", "img2"]
    np.testing.assert_array_equal(store["preview"][:], np.round(images * 255).astype(np.uint8))
    assert store.done.all() and not store.failed.any()


def test_spray_and_the_virelay_export_run_on_an_imported_store(tmp_path):
    relevance, labels, images, strategy = planted()
    datasets.from_arrays(tmp_path / "run.zarr", relevance, labels, images=images)
    results = spray.run(tmp_path / "run.zarr", clusters=[2], neighbors=5, embeddings=())
    found = results["class-0"].clusters["kmeans-2"]
    assert len({(a, b) for a, b in zip(found, strategy[labels == 0])}) == 2  # the two planted strategies
    path = virelay.export(tmp_path / "run.zarr", tmp_path / "project")
    assert (path.parent / "analysis.h5").is_file()


def test_heatmaps_without_channels_larger_previews_and_one_hot_labels(tmp_path):
    rng = np.random.default_rng(2)
    relevance = rng.normal(size=(10, 100, 100)).astype(np.float32)
    images = rng.integers(0, 256, (10, 1, 100, 100), dtype=np.uint8)
    store = datasets.from_arrays(tmp_path / "run.zarr", relevance, np.eye(2)[np.arange(10) % 2], images=images)
    assert store.attrs["keep"] == "channels" and store.attrs["input_shape"] == [1, 100, 100]
    assert store["relevance"].shape == (10, 100, 100) and store["preview"].shape == (10, 1, 64, 64)
    assert list(store["label"][:]) == [0, 1] * 5 and np.isnan(store["output"][:]).all()


def test_bad_arrays_and_an_existing_store_are_refused_with_the_fix(tmp_path):
    relevance, labels, images, _ = planted()
    with pytest.raises(ValueError, match="labels must be 60 integers"):
        datasets.from_arrays(tmp_path / "a.zarr", relevance, labels[:50])
    with pytest.raises(ValueError, match="images has 5 entries"):
        datasets.from_arrays(tmp_path / "a.zarr", relevance, labels, images=images[:5])
    with pytest.raises(ValueError, match="label 1 is out of range for 1 classes"):
        datasets.from_arrays(tmp_path / "a.zarr", relevance, labels, class_names=["only"])
    assert not (tmp_path / "a.zarr").exists()
    datasets.from_arrays(tmp_path / "a.zarr", relevance, labels)
    with pytest.raises(datasets.StoreError, match="overwrite"):
        datasets.from_arrays(tmp_path / "a.zarr", relevance, labels)
    datasets.from_arrays(tmp_path / "a.zarr", relevance[:10], labels[:10], overwrite=True)
    assert datasets.open_store(tmp_path / "a.zarr").count == 10


def test_virelay_layout_hdf5_files_are_read_chunk_by_chunk_with_their_index(tmp_path):
    relevance, labels, images, _ = planted(count=12)
    index = np.array([1, 3, 4, 6, 7, 9, 10, 11, 0, 2, 5, 8])  # positions of the attributions in the input file
    with h5py.File(tmp_path / "attribution.h5", "w") as file:
        file["attribution"] = relevance
        file["label"] = np.eye(2)[labels]
        file["prediction"] = np.eye(2, dtype=np.float32)[labels] * 3
        file["index"] = index
    stored_images = np.empty_like(images)
    stored_images[index] = images
    with h5py.File(tmp_path / "input.h5", "w") as file:
        file["data"] = stored_images
    arrays = imported.read_h5(tmp_path / "attribution.h5", tmp_path / "input.h5")
    store = datasets.from_arrays(tmp_path / "run.zarr", chunk=5, **arrays)
    np.testing.assert_array_equal(store["relevance"][:], relevance)
    np.testing.assert_array_equal(store["preview"][:], np.round(images * 255).astype(np.uint8))
    assert list(store["id"][:]) == [str(i) for i in index] and list(store["label"][:]) == list(labels)


def test_an_imported_store_carries_a_checksum_row_per_chunk_that_verify_and_readers_accept(tmp_path):
    import zarr

    from relprop.datasets import store as stores

    relevance, labels, images, _ = planted()
    datasets.from_arrays(tmp_path / "run.zarr", relevance, labels, images=images, chunk=16)
    group = zarr.open_group(str(tmp_path / "run.zarr"), mode="r")
    assert stores.verify(group) == []
    assert np.asarray(group["checksum"][:]).any(axis=1).all()  # every chunk's row was written, not left at 0
    chunks = list(datasets.open_store(tmp_path / "run.zarr").chunks(("relevance", "label")))  # checked reads
    assert [start for start, _, _ in chunks] == [0, 16, 32, 48]
    np.testing.assert_array_equal(np.concatenate([arrays["relevance"] for _, _, arrays in chunks]), relevance)
