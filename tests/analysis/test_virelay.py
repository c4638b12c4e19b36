"""The ViRelAy export: the files' layout as ViRelAy's loader reads it, and the project opened by that loader."""
import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from relprop.analysis import spray, virelay

from .stores import write_store

ROOT = Path(__file__).resolve().parents[2]
VIRELAY_PYTHON = os.environ.get("RELPROP_VIRELAY_PYTHON", str(ROOT / ".venv-virelay" / "bin" / "python"))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A store of 30 samples (2 classes, 8x8 inputs, 3-channel relevance at 16x16), analysed and exported."""
    folder = tmp_path_factory.mktemp("virelay")
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 15)
    relevance = rng.normal(size=(30, 3, 16, 16)).astype(np.float32)
    preview = rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    output = rng.normal(size=(30, 2)).astype(np.float32)
    done = np.arange(30) < 28  # the last chunk is not finished: those two are not exported as attributions
    store = write_store(folder / "run.zarr", relevance, labels, output, chunk=4, preview=preview, done=done,
                        class_names=["cat", "dog"])
    spray.run(store, clusters=[2, 3], neighbors=4, eigenvalues=5, embeddings=("spectral", "tsne"),
              algorithms=("kmeans",))
    path = virelay.export(store, folder / "project")
    return store, path, dict(relevance=relevance, preview=preview, output=output, labels=labels)


def test_input_file_holds_every_sample_as_float_images_with_integer_labels(project):
    _, path, data = project
    with h5py.File(path.parent / "input.h5") as file:
        assert file["data"].shape == (30, 3, 8, 8) and file["data"].dtype == np.float32
        np.testing.assert_allclose(file["data"][:], data["preview"] / 255, rtol=1e-6)
        assert file["label"].dtype.kind == "i" and list(file["label"][:]) == list(data["labels"])


def test_attribution_file_holds_explained_samples_pooled_to_the_input_size(project):
    _, path, data = project
    with h5py.File(path.parent / "attribution.h5") as file:
        assert list(file["index"][:]) == list(range(28))
        expected = data["relevance"][:28].reshape(28, 3, 8, 2, 8, 2).mean((3, 5))  # 2x2 average pooling
        np.testing.assert_allclose(file["attribution"][:], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(file["prediction"][:], data["output"][:28])
        assert file["label"].dtype.kind == "i" and list(file["label"][:]) == list(data["labels"][:28])


def test_analysis_file_follows_virelays_loader_not_its_specification(project):
    store, path, _ = project
    with h5py.File(path.parent / "analysis.h5") as file:
        assert sorted(file.keys()) == ["class-0", "class-1"]
        group = file["class-1"]
        result = spray.read(store, "class-1")
        assert list(group["index"][:]) == list(result.index)
        assert sorted(group["cluster"].keys()) == ["kmeans-2", "kmeans-3"]  # "cluster", not "clustering"
        assert isinstance(group["embedding/spectral"], h5py.Dataset)  # a dataset, not a group with "root"
        np.testing.assert_allclose(group["embedding/spectral"].attrs["eigenvalue"], result.eigenvalues, rtol=1e-6)
        assert group["embedding/tsne"].shape == (len(result.index), 2)
    labels = json.loads((path.parent / "label-map.json").read_text())
    assert labels[1] == {"index": 1, "word_net_id": "class-1", "name": "dog"}


def test_virelays_own_loader_opens_the_project(project):
    if not Path(VIRELAY_PYTHON).exists():
        pytest.skip("ViRelAy's environment is missing; build it with scripts/virelay_venv.sh")
    _, path, data = project
    script = (
        "import json, sys\n"
        "from virelay.model import Project\n"
        "project = Project(sys.argv[1])\n"
        "sample, attribution = project.get_sample(5), project.get_attribution(5)\n"
        "methods = project.get_analysis_methods()\n"
        "categories = project.get_analysis_categories('spray')\n"
        "analysis = project.get_analysis('spray', 'class-1', 'kmeans-2', 'spectral')\n"
        "heatmap = attribution.render_heatmap('blue-white-red')\n"
        "print(json.dumps({'sample': list(sample.data.shape), 'label': sample.labels[0].name,\n"
        "    'attribution': list(attribution.data.shape), 'methods': methods,\n"
        "    'categories': sorted((c.name, c.human_readable_name) for c in categories),\n"
        "    'clusterings': project.get_analysis_clustering_names('spray'),\n"
        "    'embeddings': project.get_analysis_embedding_names('spray'),\n"
        "    'index': analysis.attribution_indices.tolist(), 'eigenvalues': len(analysis.eigenvalues),\n"
        "    'heatmap': list(heatmap.shape)}))\n")
    result = subprocess.run([VIRELAY_PYTHON, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["sample"] == [8, 8, 3] and seen["label"] == "dog"  # sample 5 is of class 1
    assert seen["attribution"] == [8, 8, 3] and seen["heatmap"][:2] == [8, 8]
    assert seen["methods"] == ["spray"]
    assert seen["categories"] == [["class-0", "cat"], ["class-1", "dog"]]
    assert sorted(seen["clusterings"]) == ["kmeans-2", "kmeans-3"]
    assert sorted(seen["embeddings"]) == ["spectral", "tsne"]
    assert seen["index"] == [i for i in range(28) if data["labels"][i] == 1] and seen["eigenvalues"] == 5


def test_export_of_a_store_without_previews_says_why(tmp_path):
    store = write_store(tmp_path / "run.zarr", np.ones((4, 5)), np.zeros(4), np.ones((4, 2)))
    with pytest.raises(ValueError, match="preview"):
        virelay.export(store, tmp_path / "out")


def test_export_of_a_store_without_a_spray_analysis_is_refused_with_the_fix(tmp_path):
    rng = np.random.default_rng(1)
    store = write_store(tmp_path / "run.zarr", rng.normal(size=(6, 3, 8, 8)), np.zeros(6), np.ones((6, 2)),
                        preview=rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"no SpRAy analysis.*relprop spray .*run\.zarr"):
        virelay.export(store, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_classes_the_store_has_no_name_for_are_named_by_index(tmp_path):
    """A folder of a/ and b/ explained by a model with three outputs: the third class is class-2."""
    rng = np.random.default_rng(2)
    labels = np.array([0, 1] * 6)
    relevance = rng.normal(size=(12, 3, 8, 8)).astype(np.float32)
    store = write_store(tmp_path / "run.zarr", relevance, labels, rng.normal(size=(12, 3)), class_names=["a", "b"],
                        preview=rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8))
    spray.run(store, clusters=[2], neighbors=3, eigenvalues=4, embeddings=(), algorithms=("kmeans",))
    path = virelay.export(store, tmp_path / "project")
    names = [entry["name"] for entry in json.loads((path.parent / "label-map.json").read_text())]
    assert names == ["a", "b", "class-2"]
    assert virelay.class_names(None, 2) == ["class-0", "class-1"]
