"""relprop.datasets.images: image files explained into a folder from Python, as `relprop explain` does it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from relprop import LRP
from relprop.attribution import Gradient
from relprop.datasets.images import ImagesError, explain_images, explain_to_folder
from relprop.demo import generate
from relprop.loading import Preprocessing, find_images, load_model
from relprop.outputs import OutputError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """a.png, b.png, sub/c.png (demo shapes) and an unreadable broken.png."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    pixels, _, _ = generate(3, seed=5)
    for name, picture in zip(("a.png", "b.png", "sub/c.png"), pixels):
        Image.fromarray((picture.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_a_folder_becomes_heatmaps_overlays_and_a_summary_that_starts_with_the_description(folder, tmp_path):
    loaded = load_model("demo")
    calls = []

    class Meter:
        def __init__(self, total):
            calls.append(("total", total))

        def update(self, count):
            calls.append(("update", count))

        def close(self):
            calls.append(("close",))

    out = tmp_path / "out"
    result = explain_to_folder(find_images([folder]), LRP(loaded.model, "epsilon"), loaded.preprocessing, out,
                               labels=loaded.labels, batch_size=2, output_format="npy", progress=Meter,
                               description={"model": "demo", "method": "lrp"})
    assert [record["heatmap"] for record in result.records] == ["a.heatmap.png", "b.heatmap.png",
                                                                "sub/c.heatmap.png"]
    assert [failure["stage"] for failure in result.failures] == ["read"]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["model", "method", "target", "preprocessing", "images", "failed"]
    assert summary == result.summary and summary["target"] == "auto"
    for record in result.records:
        assert (out / record["heatmap"]).is_file() and (out / record["overlay"]).is_file()
        assert np.load(out / record["relevance"]).shape == (3, 32, 32)
    assert calls == [("total", 4), ("update", 2), ("update", 2), ("close",)]


def test_a_batch_that_will_not_fit_is_refused_before_any_image_is_read(folder, tmp_path):
    class Full:
        def fitting(self, shape, wanted):
            return 1

        def refusal(self, shape, images):
            return f"{images} images of {shape} will not fit"

    loaded = load_model("demo")
    with pytest.raises(ImagesError, match=r"^2 images of \(3, 32, 32\) will not fit$"):
        explain_to_folder(find_images([folder]), Gradient(loaded.model), loaded.preprocessing, tmp_path / "out",
                          batch_size=2, budget=Full())
    assert not (tmp_path / "out").exists()


def test_a_model_that_takes_no_image_is_an_error_and_nothing_is_written(folder, tmp_path):
    class Refuses(torch.nn.Module):
        def forward(self, x):
            raise ValueError("never")

    with pytest.raises(ImagesError, match="no image could be explained; .*: never"):
        explain_to_folder(find_images([folder]), Gradient(Refuses()), Preprocessing(size=32), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_holding_other_files_is_never_replaced(folder, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    loaded = load_model("demo")
    with pytest.raises(OutputError, match=r"mine holds files relprop did not write \(notes.txt\)"):
        explain_to_folder(find_images([folder]), Gradient(loaded.model), loaded.preprocessing, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_failing_batch_is_explained_image_by_image():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    items = [("a", torch.rand(3, 2, 2)), ("b", torch.rand(3, 2, 2))]
    (done, result), = explain_images(Gradient(model), items, None, "cpu")
    assert [key for key, _ in done] == ["a", "b"] and result.relevance.shape == (2, 3, 2, 2)
    bad = [("a", torch.rand(3, 2, 2)), ("b", torch.rand(3, 2, 2))]
    results = list(explain_images(Gradient(model), bad, 5, "cpu"))  # target 5 of 2 classes: each image fails
    assert [key for (key, _), _ in results] == ["a", "b"] and all(isinstance(message, str) for _, message in results)
