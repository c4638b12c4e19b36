"""`relprop run` end to end in subprocesses: exit codes, messages, what lands in the store."""
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import relprop.datasets as datasets
from relprop.demo import KINDS, generate
from relprop.demo.model import WEIGHTS


def relprop_run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "relprop", "run", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=180)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The module's CLI calls, started together; each test reads its own."""
    root = tmp_path_factory.mktemp("cli")
    folder = root / "images"
    pixels, labels, _ = generate(6, seed=4)
    for i, (picture, label) in enumerate(zip(pixels, labels)):
        (folder / KINDS[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray((picture.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(
            folder / KINDS[label] / f"{i}.png")
    (folder / KINDS[0] / "broken.png").write_bytes(b"not a png")
    resumed = root / "resumed.zarr"
    datasets.run("demo", "demo:6", resumed, batch_size=4, progress=False)
    calls = {
        "demo": ["demo:6", "--model", "demo", "--store", root / "demo.zarr", "--batch-size", "4", "--weights",
                 WEIGHTS, "--param", "epsilon=0.5"],
        "folder": [folder, "--model", "demo", "--store", root / "folder.zarr", "--target", "predicted"],
        "other": ["demo:6", "--model", "demo", "--store", resumed, "--batch-size", "4", "--composite", "epsilon"],
        "missing": ["demo:6", "--model", "demo", "--store", root / "no" / "run.zarr"],
        "address": ["demo:6", "--model", "demo", "--store", root / "a.zarr", "--address", "10.0.0.1:6379"],
        "target": ["demo:6", "--model", "demo", "--store", root / "t.zarr", "--target", "most"],
        "data": ["nowhere", "--model", "demo", "--store", root / "d.zarr"],
    }
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(calls, pool.map(lambda args: relprop_run(*args), calls.values())))
    return root, results


def test_run_on_demo_data_writes_a_complete_store_and_a_summary(runs):
    root, results = runs
    result = results["demo"]
    assert result.returncode == 0, result.stderr
    assert "explained 6 of 6 samples in" in result.stdout and "samples/s" in result.stdout
    assert "0 skipped, store " in result.stdout and "MiB" in result.stdout
    assert "6/6 samples, " in result.stderr and "ETA" in result.stderr  # a progress line per chunk off a terminal
    opened = datasets.open_store(root / "demo.zarr")
    assert opened.complete and opened.attrs["parameters"] == {"epsilon": 0.5}
    assert opened.attrs["weights_sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()


def test_run_on_an_image_folder_lists_unreadable_images_and_exits_1(runs):
    root, results = runs
    result = results["folder"]
    assert result.returncode == 1, result.stderr
    opened = datasets.open_store(root / "folder.zarr")
    broken = opened["id"][:].tolist().index("circle/broken.png")
    assert f"relprop: skipped circle/broken.png (sample {broken}): not a readable image" in result.stderr
    assert opened.complete and np.flatnonzero(opened.failed).tolist() == [broken]
    assert [entry["id"] for entry in opened.skipped] == ["circle/broken.png"]
    assert opened.class_names == sorted(opened.class_names)


def test_run_against_a_store_of_other_arguments_exits_2_naming_them(runs):
    result = runs[1]["other"]
    assert result.returncode == 2
    assert "composite: the store has 'epsilon_plus_flat', this run 'epsilon'" in result.stderr
    assert "--overwrite" in result.stderr


@pytest.mark.parametrize("call, message", [("missing", "does not exist; create it first"),
                                           ("address", "--address joins a Ray cluster; add --engine ray"),
                                           ("target", "--target must be label, predicted or a class index"),
                                           ("data", "neither a folder nor a known data set")])
def test_run_given_bad_input_exits_2_with_one_line(runs, call, message):
    result = runs[1][call]
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("relprop: error: ")
