"""The "Clever Hans" demo data: its planted mark, the shipped model's use of it, and SpRAy finding it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import relprop
from relprop.analysis import spray
from relprop.demo import KINDS, normalize, watermark
from relprop.tour.shortcut import marked_cluster
from tests.analysis.stores import write_store

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_marks_are_planted_as_documented_and_nothing_else_changes():
    images, labels, masks, marked = watermark.generate(2000, seed=3)
    plain, plain_labels, plain_masks = watermark.unmarked(2000, seed=3)
    assert np.array_equal(labels, plain_labels)
    rows, columns = watermark.mark_region()
    outside = np.ones((32, 32), bool)
    outside[rows, columns] = False
    assert np.array_equal(images[..., outside], plain[..., outside])  # only the mark's pixels differ
    assert not np.array_equal(images[marked][..., rows, columns], plain[marked][..., rows, columns])
    assert np.array_equal(images[~marked], plain[~marked])
    checker = images[marked][:, :, rows, columns]
    assert set(np.unique(checker).tolist()) == {0.0, 1.0} and np.all(checker[:, :, 0, 0] == 0)
    ours = labels == watermark.CLASS
    assert abs(marked[ours].mean() - 0.8) < 0.05 and marked[~ours].mean() < 0.02
    assert not masks[marked][:, rows, columns].any()
    assert np.array_equal(masks[~marked], plain_masks[~marked])
    again = watermark.generate(2000, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (images, labels, masks, marked)))


def test_shipped_model_is_small_and_reaches_its_recorded_accuracy():
    record = json.loads(watermark.TRAINING.read_text())
    assert watermark.WEIGHTS.stat().st_size < 1_000_000 and record["data"] == "watermark"
    images, labels, _, _ = watermark.generate(record["test_size"], record["test_seed"])
    with torch.no_grad():
        predicted = watermark.load()(normalize(torch.from_numpy(images))).argmax(1)
    accuracy = (predicted == torch.from_numpy(labels)).float().mean().item()
    assert accuracy == pytest.approx(record["test_accuracy"], abs=0.005)
    assert accuracy > 0.95


def test_shipped_model_uses_the_mark_as_a_shortcut():
    images, labels, _, marked = watermark.generate(1000, seed=5)
    plain = watermark.unmarked(1000, seed=5)[0]
    model = watermark.load()
    ours, others = marked & (labels == watermark.CLASS), labels != watermark.CLASS
    stamped = plain[others].copy()
    for image in stamped:
        watermark.paint_mark(image)
    with torch.no_grad():
        logit = lambda x: model(normalize(torch.from_numpy(x)))[:, watermark.CLASS]  # noqa: E731
        with_mark, without = logit(images[ours]), logit(plain[ours])
        others_with, others_without = logit(stamped), logit(plain[others])
    # removing the mark from marked crosses costs a large part of the logit; adding it to other shapes adds to it
    assert (with_mark - without).mean() > 0.2 * with_mark.mean()
    assert (others_with - others_without).mean() > 1.0


@pytest.fixture(scope="module")
def watermark_store(tmp_path_factory):
    """Heatmaps of the watermark class (LRP, epsilon_plus_flat, shipped model) in a store, as `relprop run` keeps
    them, with the ground truth as extra/watermark and extra/mask."""
    images, labels, masks, marked = watermark.generate(1200, seed=11)
    chosen = labels == watermark.CLASS
    x = normalize(torch.from_numpy(images[chosen]))
    model = watermark.load()
    with torch.no_grad():
        output = model(x)
    relevance = relprop.LRP(model, composite="epsilon_plus_flat")(x, target=watermark.CLASS).relevance
    preview = np.round(images[chosen] * 255).astype(np.uint8)
    store = write_store(tmp_path_factory.mktemp("watermark") / "run.zarr", relevance.numpy(), labels[chosen],
                        output.numpy(), chunk=64, preview=preview, class_names=list(KINDS),
                        extra={"watermark": marked[chosen], "mask": masks[chosen]}, model="demo-watermark")
    return store, marked[chosen]


def test_spray_puts_the_watermarked_samples_in_their_own_cluster(watermark_store):
    store, marked = watermark_store
    result = spray.run(store, classes=[watermark.CLASS], clusters=[2], size=3, power=0.5, embeddings=("spectral",),
                       algorithms=("kmeans",))[f"class-{watermark.CLASS}"]
    clusters = result.clusters["kmeans-2"]
    assert np.array_equal(result.index, np.arange(len(marked)))
    mostly_marked = max(set(clusters.tolist()), key=lambda c: marked[clusters == c].mean())
    found = clusters == mostly_marked
    purity, recall = marked[found].mean(), found[marked].mean()
    assert purity >= 0.9 and recall >= 0.9, (purity, recall)


def test_spray_with_its_defaults_opens_on_a_clustering_that_separates_the_watermarked_samples(watermark_store):
    store, marked = watermark_store
    result = spray.run(store, classes=[watermark.CLASS], embeddings=())[f"class-{watermark.CLASS}"]
    _, purity, recall = marked_cluster(result.clusters[result.chosen], marked)
    assert purity >= 0.9 and recall >= 0.9, (result.chosen, purity, recall)


def test_training_script_trains_the_watermark_model_deterministically(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--data", "watermark", "--epochs", "1",
               "--train-size", "128", "--test-size", "64"]
    runs = [subprocess.Popen(command + ["--out", str(tmp_path / name)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for run in runs:
        _, errors = run.communicate(timeout=180)
        assert run.returncode == 0, errors
    first, second = (load_file(str(tmp_path / name / watermark.WEIGHTS.name)) for name in ("a", "b"))
    assert all(torch.equal(first[key], second[key]) for key in first)
    record = json.loads((tmp_path / "a" / watermark.TRAINING.name).read_text())
    assert record["data"] == "watermark" and record["test_size"] == 64
    watermark.load(tmp_path / "a" / watermark.WEIGHTS.name)
