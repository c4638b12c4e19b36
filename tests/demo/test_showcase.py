"""The embedded demo: its data, its shipped model, where relevance lands, its command and its page."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from relprop.demo import KINDS, generate, load, normalize
from relprop.tour import showcase
from relprop.demo.model import TRAINING, WEIGHTS
from tests.browser import rendered

ROOT = Path(__file__).resolve().parents[2]


def test_generated_images_are_the_same_for_the_same_seed():
    first, second = generate(6, seed=3), generate(6, seed=3)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], generate(6, seed=4)[0])


def test_the_deciding_object_is_the_only_coloured_one_and_its_mask_is_exact():
    images, labels, masks = generate(20, seed=5)
    assert set(labels.tolist()) <= set(range(len(KINDS)))
    for image, mask in zip(images, masks):
        spread = image.max(0) - image.min(0)  # zero on grey pixels
        assert mask.sum() > 20
        assert spread[~mask].max() == 0.0
        assert spread[mask].min() > 0.1


def test_shipped_weights_are_small_and_reach_the_recorded_accuracy():
    record = json.loads(TRAINING.read_text())
    assert WEIGHTS.stat().st_size < 1_000_000
    images, labels, _ = generate(record["test_size"], record["test_seed"])
    with torch.no_grad():
        predicted = load()(normalize(torch.from_numpy(images))).argmax(1)
    accuracy = (predicted == torch.from_numpy(labels)).float().mean().item()
    assert accuracy == pytest.approx(record["test_accuracy"], abs=0.005)
    assert accuracy > 0.97


def test_relevance_lands_on_the_deciding_object(tmp_path):
    result = showcase.run(tmp_path, count=4, seed=7, shortcut=False)  # the shortcut: see the demo command below
    area = result["mean_object_area"]
    for name, share in result["mean_positive_relevance_in_object"].items():
        assert share > 0.6 and share > 5 * area, name  # objects cover about 7% of the image
    assert [image["label"] for image in result["images"]] == list(KINDS)  # one of each class
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.png", "index.html"]


def test_positive_share_counts_only_positive_relevance_inside_the_mask():
    relevance = torch.tensor([[[[3.0, 1.0], [-5.0, 0.0]]]])
    masks = torch.tensor([[[True, False], [True, False]]])
    assert showcase.positive_share_in_mask(relevance, masks).tolist() == [0.75]


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "relprop-demo"
    result = subprocess.run([sys.executable, "-m", "relprop", "demo", "--out", str(out), "--count", "2",
                             "--composite", "epsilon_plus_flat", "--composite", "epsilon"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert "share of positive relevance inside the deciding object" in result.stdout
    return out


def test_demo_command_writes_grid_page_and_numbers(demo_folder):
    record = json.loads((demo_folder / "demo.json").read_text())
    assert record["composites"] == ["epsilon_plus_flat", "epsilon"] and len(record["images"]) == 2
    assert (demo_folder / "demo.png").read_bytes().startswith(b"\x89PNG")
    assert 'src="demo.png"' in (demo_folder / "index.html").read_text()


def test_demo_finds_the_planted_shortcut_with_a_store_and_spray_and_links_the_report(demo_folder):
    from relprop import datasets
    from relprop.analysis import spray
    from relprop.demo import watermark

    found = json.loads((demo_folder / "demo.json").read_text())["shortcut"]
    assert found["purity"] >= 0.9 and found["recall"] >= 0.9, found
    # the figures follow from what the store and the analysis hold, checked here against the planted truth
    store = datasets.open_store(demo_folder / "watermark.zarr")
    assert store.complete and store.attrs["data"] == "demo-watermark:480" and store.attrs["model"] == "demo-watermark"
    analysis = spray.read(demo_folder / "watermark.zarr", f"class-{watermark.CLASS}")
    assert bool((store["label"][:][analysis.index] == watermark.CLASS).all())
    marked = store["extra/watermark"][:][analysis.index]
    clusters = analysis.clusters["kmeans-2"]
    shares = [marked[clusters == c].mean() for c in (0, 1)]
    assert sorted(shares)[0] < 0.1 < 0.9 < sorted(shares)[1]  # one cluster of marked samples, one of the rest
    assert found["marked"] == int(marked.sum()) and found["explained"] == len(analysis.index)
    page = (demo_folder / "index.html").read_text()
    assert 'href="spray/index.html"' in page and f"purity {found['purity']:.0%}" in page
    assert (demo_folder / "spray" / "index.html").is_file()


def test_demo_removes_the_shortcut_with_p_clarc_and_verifies_it(demo_folder):
    from relprop.loading import load_model

    fixed = json.loads((demo_folder / "demo.json").read_text())["shortcut"]["correction"]
    # the bar, measured with the true mark: sensitivity down by 80% or more, clean accuracy down by <= 1 pp
    assert fixed["truth"]["sensitivity_drop"] >= 0.8, fixed
    assert fixed["truth"]["clean_accuracy_change"] >= -0.01, fixed
    assert fixed["measured"]["after"]["artifact_sensitivity"] < 0.2 * fixed["measured"]["before"]["artifact_sensitivity"]
    assert 'href="correct/report/index.html"' in (demo_folder / "index.html").read_text()
    assert (demo_folder / "correct" / "report" / "index.html").is_file()
    assert load_model(str(demo_folder / fixed["model"])).spec.endswith("model.json")


def test_demo_page_opens_in_headless_chromium_without_console_errors(demo_folder):
    decoded, images, rows = rendered(demo_folder)
    assert decoded == images == 1  # the grid image decoded
    assert rows == 4 + 6  # the composites' table: header, 2 images, mean; the correction's: header, 5 measures


def test_correction_report_opens_offline_with_every_heatmap_decoded(demo_folder):
    decoded, images, rows = rendered(demo_folder / "correct" / "report")
    assert decoded == images == 12 * 3  # 12 marked crosses: the input and its heatmap before and after
    assert rows == 6 + 1 + 12  # the measures' table (header, 5 measures); the heatmaps' (header, 12 samples)


def test_training_script_is_deterministic_and_writes_what_the_demo_loads(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--epochs", "1", "--train-size", "128",
               "--test-size", "64"]
    runs = [subprocess.Popen(command + ["--out", str(tmp_path / name)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for run in runs:
        _, errors = run.communicate(timeout=120)
        assert run.returncode == 0, errors
    first, second = (load_file(str(tmp_path / name / WEIGHTS.name)) for name in ("a", "b"))
    assert all(torch.equal(first[key], second[key]) for key in first)
    record = json.loads((tmp_path / "a" / TRAINING.name).read_text())
    assert record["test_size"] == 64 and 0 <= record["test_accuracy"] <= 1
    load(tmp_path / "a" / WEIGHTS.name)
