"""The command line end to end, through `python -m relprop` in subprocesses (run a few at a time)."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from relprop.demo import KINDS, generate


def relprop_cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # several run at once on a small machine
    return subprocess.run([sys.executable, "-m", "relprop", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    pixels, labels, _ = generate(4, seed=11)
    for i, (picture, label) in enumerate(zip(pixels, labels)):
        array = (picture.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"shape{i}-{KINDS[label]}.png")
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory):
    """All CLI calls of this module, started together; each test reads its own."""
    root = tmp_path_factory.mktemp("runs")
    wrong = root / "wrong.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(wrong))
    factory = root / "tiny.py"
    factory.write_text("import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
                       "torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))\n")
    (root / "kept").mkdir()
    (root / "kept" / "notes.txt").write_text("mine")
    calls = {
        "demo_model": ["explain", images, "--model", "demo", "--out", root / "demo_model", "--format", "npy",
                       "--batch-size", "3"],
        "missing_weights": ["explain", images, "--model", "demo", "--weights", root / "nope.pt",
                            "--out", root / "missing_weights"],
        "wrong_weights": ["explain", images, "--model", "demo", "--weights", wrong, "--out", root / "wrong_weights"],
        "unknown_composite": ["explain", images, "--model", "demo", "--composite", "epsilon_delta",
                              "--out", root / "unknown_composite"],
        "unknown_model": ["explain", images, "--model", "resnet50", "--out", root / "unknown_model"],
        "factory": ["explain", sorted(images.glob("shape0-*.png"))[0], "--model",
                    f"{factory}:make", "--size", "16", "--target", "2", "--composite", "epsilon_gamma_box",
                    "--out", root / "kept"],
        "deeplift": ["explain", sorted(images.glob("shape1-*.png"))[0], "--model", "demo", "--method", "deeplift",
                     "--out", root / "deeplift"],
        "occlusion_with_param": ["explain", images, "--model", "demo", "--method", "occlusion", "--param",
                                 "epsilon=0.1", "--out", root / "occlusion_with_param"],
        "composites": ["composites"],
        "rules": ["rules"],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(relprop_cli, *args) for name, args in calls.items()}
        results = {name: future.result() for name, future in futures.items()}
    return root, results


def test_explains_every_readable_image_and_writes_heatmaps_overlays_and_summary(runs, images):
    root, results = runs
    result = results["demo_model"]
    assert result.returncode == 1, result.stderr  # one file could not be read
    out = root / "demo_model"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "demo" and summary["composite"] == "epsilon_plus_flat"
    assert len(summary["images"]) == 4
    for record in summary["images"]:
        assert {"file", "predicted", "target", "output", "relevance_sum", "residual"} <= set(record)
        assert record["predicted_label"] in Path(record["file"]).stem  # the demo model gets these right
        assert record["target"] == record["predicted"]  # --target auto
        assert record["residual"] == pytest.approx(record["output"] - record["relevance_sum"], abs=1e-4)
        for key in ("heatmap", "overlay"):
            with Image.open(out / record[key]) as picture:
                assert picture.format == "PNG" and picture.size == (256, 256)  # 32 px enlarged 8x
        relevance = np.load(out / record["relevance"])
        assert relevance.shape == (3, 32, 32)
        assert float(relevance.sum()) == pytest.approx(record["relevance_sum"], rel=1e-4, abs=1e-4)


def test_unreadable_file_is_reported_skipped_and_makes_exit_code_1(runs):
    root, results = runs
    result = results["demo_model"]
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    summary = json.loads((root / "demo_model" / "summary.json").read_text())
    assert [Path(f["file"]).name for f in summary["failed"]] == ["broken.png"]
    assert not (root / "demo_model" / "broken.heatmap.png").exists()


@pytest.mark.parametrize("name, message", [
    ("missing_weights", "weights file not found"),
    ("wrong_weights", "do not fit demo"),
    ("unknown_composite", "unknown composite 'epsilon_delta'; choose one of"),
    ("unknown_model", "unknown model spec 'resnet50'; use demo, torchvision:NAME"),
])
def test_unusable_arguments_exit_2_with_one_line_and_write_nothing(runs, name, message):
    root, results = runs
    result = results[name]
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (root / name).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(f".{name}")]  # no staging folder left behind


def test_user_factory_model_with_own_size_and_target_adds_to_an_existing_folder(runs):
    root, results = runs
    result = results["factory"]
    assert result.returncode == 0, result.stderr
    out = root / "kept"
    assert (out / "notes.txt").read_text() == "mine"
    summary = json.loads((out / "summary.json").read_text())
    (record,) = summary["images"]
    assert record["target"] == 2 and summary["target"] == 2 and record["predicted_label"] is None
    assert summary["preprocessing"] == {"size": 16, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    with Image.open(out / record["overlay"]) as picture:
        assert picture.size == (256, 256)


def test_listings_show_names_parameters_and_summaries(runs):
    _, results = runs
    composites, rules = results["composites"], results["rules"]
    assert composites.returncode == 0 and rules.returncode == 0
    assert "epsilon_gamma_box" in composites.stdout and "low=-3.0" in composites.stdout
    assert "gamma" in rules.stdout and "gamma=0.25" in rules.stdout and "'float'" not in rules.stdout


def test_other_attribution_methods_run_from_the_command_line(runs):
    root, results = runs
    result = results["deeplift"]
    assert result.returncode == 0, result.stderr
    summary = json.loads((root / "deeplift" / "summary.json").read_text())
    assert summary["method"] == "deeplift" and summary["composite"] is None
    (record,) = summary["images"]
    assert (root / "deeplift" / record["heatmap"]).exists()
    refused = results["occlusion_with_param"]
    assert refused.returncode == 2 and "only --method lrp" in refused.stderr
    assert not (root / "occlusion_with_param").exists()
