"""`relprop run` end to end (in subprocesses, and in this process through click's runner): exit codes, messages,
what lands in the store."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import relprop.datasets as datasets
from relprop import cli
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
    assert "composite (--composite): the store has 'epsilon_plus_flat', this run 'epsilon'" in result.stderr
    assert "--overwrite" in result.stderr


@pytest.mark.parametrize("call, message", [("missing", "does not exist; create it first"),
                                           ("address", "--address joins a Ray cluster; add --engine ray"),
                                           ("target", "--target must be label, predicted or a class index"),
                                           ("data", "neither a folder nor a known data set")])
def test_run_given_bad_input_exits_2_with_one_line(runs, call, message):
    result = runs[1][call]
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("relprop: error: ")


# ---- in this process: the arguments that change stored numbers, labels, notes -----------------------------------
def invoke(*args):
    return CliRunner().invoke(cli.main, ["run", *map(str, args)], catch_exceptions=False)


def save_images(folder, names, seed=7):
    """Demo shapes as PNGs, in folder/<name>/ for each of names (cycled), or flat when names is None."""
    pixels, _, _ = generate(8, seed=seed)
    for i, picture in enumerate(pixels):
        place = folder if names is None else folder / names[i % len(names)]
        place.mkdir(parents=True, exist_ok=True)
        Image.fromarray((picture.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(place / f"{i}.png")
    return folder


# What each `relprop run` option does to the stored numbers. Adding an option means deciding which list it joins
# (test_every_run_option_is_classified); every one that changes numbers is refused on resume, finished or not.
CHANGES_NUMBERS = {"model_spec": ("--model", "demo-watermark", "model (--model)"),
                   "weights": ("--weights", WEIGHTS, "weights_sha256 (--weights): the store has None"),
                   "method": ("--method", "gradient", "method (--method): the store has 'lrp', this run 'gradient'"),
                   "composite": ("--composite", "epsilon", "composite (--composite)"),
                   "params": ("--param", "epsilon=0.5", "parameters (--param): the store has {}, this run "
                                                        "{'epsilon': 0.5}"),
                   "target": ("--target", "predicted", "target (--target)"),
                   "class_map": ("--class-map", "circle=1,square=0,triangle=2,cross=3", "class_map (--class-map)"),
                   "keep": ("--keep", "float16", "keep (--keep)"),
                   "size": ("--size", "40", "size (--size): the store has 32, this run 40"),
                   "mean": ("--mean", "0.4,0.4,0.4", "mean (--mean): the store has [0.5, 0.5, 0.5], this run "
                                                     "[0.4, 0.4, 0.4]"),
                   "std": ("--std", "0.3,0.3,0.3", "std (--std)"),
                   "data": (None, None, "data (DATA)")}
# --batch-size and --device change only rounding (the same arithmetic in another order); --chunk is the layout,
# kept with a note; the others change nothing stored.
KEEPS_NUMBERS = {"store_path", "batch_size", "device", "chunk", "workers", "engine", "address", "overwrite"}


def test_every_run_option_is_classified():
    options = {parameter.name for parameter in cli.main.get_command(None, "run").params}
    assert options == set(CHANGES_NUMBERS) | KEEPS_NUMBERS


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished store of a class-folder data set, and the arguments that made it."""
    root = tmp_path_factory.mktemp("made")
    folder = save_images(root / "shapes", list(KINDS))
    save_images(root / "others", list(KINDS), seed=8)
    arguments = [folder, "--model", "demo", "--batch-size", "4", "--chunk", "4"]
    result = invoke(*arguments, "--store", root / "run.zarr")
    assert result.exit_code == 0, result.output
    return root, arguments


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "unfinished"])
@pytest.mark.parametrize("option", sorted(CHANGES_NUMBERS))
def test_resuming_with_any_option_that_changes_numbers_is_refused_naming_it(made, tmp_path, option, finished):
    root, arguments = made
    store = tmp_path / "run.zarr"
    shutil.copytree(root / "run.zarr", store)
    if not finished:
        datasets.open_store(store, mode="r+").group["done"][4:] = False
    before = datasets.open_store(store).done.tolist()
    flag, value, named = CHANGES_NUMBERS[option]
    given = [root / "others", *arguments[1:]] if option == "data" else [*arguments, flag, value]
    result = invoke(*given, "--store", store)
    assert result.exit_code == 2, result.output
    assert named in result.stderr and "give the store's values to resume it" in result.stderr
    assert "--overwrite" in result.stderr
    assert datasets.open_store(store).done.tolist() == before  # nothing explained into it


def test_chunk_on_resume_is_kept_with_a_note(made, tmp_path):
    root, arguments = made
    shutil.copytree(root / "run.zarr", tmp_path / "run.zarr")
    result = invoke(*arguments, "--store", tmp_path / "run.zarr", "--chunk", "2")
    assert result.exit_code == 0 and "nothing to do" in result.stdout
    assert "relprop: note: " in result.stderr and "keeps its chunking of 4 samples per chunk" in result.stderr
    assert datasets.open_store(tmp_path / "run.zarr").chunk == 4


def test_a_flat_folder_with_the_default_target_explains_the_prediction_and_says_so(tmp_path):
    folder = save_images(tmp_path / "flat", None)
    result = invoke(folder, "--model", "demo", "--store", tmp_path / "run.zarr")
    assert result.exit_code == 0, result.output
    assert "has no labels (no class sub-folders), so each sample's predicted class is explained" in result.stderr
    opened = datasets.open_store(tmp_path / "run.zarr")
    assert opened.complete and opened.attrs["target"] == "predicted"
    assert np.array_equal(opened["target"][:], opened["output"][:].argmax(1))
    again = invoke(folder, "--model", "demo", "--store", tmp_path / "run.zarr")  # the same command resumes it
    assert again.exit_code == 0 and "nothing to do" in again.stdout


def test_folder_classes_that_are_not_the_models_are_refused_and_a_class_map_maps_them(tmp_path):
    folder = save_images(tmp_path / "pets", ["cats", "dogs"])
    refused = invoke(folder, "--model", "demo", "--store", tmp_path / "refused.zarr")
    assert refused.exit_code == 2
    assert "its 2 class names (cats, dogs) but the model outputs 4 classes" in refused.stderr
    assert "--target predicted" in refused.stderr and "--class-map cats=N,dogs=N" in refused.stderr
    assert not (tmp_path / "refused.zarr").exists()
    (tmp_path / "map.json").write_text(json.dumps({"cats": 2, "dogs": 0}))
    for given, store in (("cats=2,dogs=0", "pairs.zarr"), (tmp_path / "map.json", "file.zarr")):
        result = invoke(folder, "--model", "demo", "--store", tmp_path / store, "--class-map", given)
        assert result.exit_code == 0, result.output
        opened = datasets.open_store(tmp_path / store)
        folders = [name.split("/")[0] for name in opened["id"][:].tolist()]
        assert opened["label"][:].tolist() == [{"cats": 2, "dogs": 0}[name] for name in folders]
        assert opened["target"][:].tolist() == opened["label"][:].tolist()
        assert opened.class_names == ["dogs", "class-1", "cats", "class-3"]


@pytest.mark.parametrize("given, message", [("cats:2", "--class-map takes NAME=INDEX pairs"),
                                            ("cats=2", "gives no model class for dogs")])
def test_a_bad_class_map_is_refused_with_one_line(tmp_path, given, message):
    folder = save_images(tmp_path / "pets", ["cats", "dogs"])
    result = invoke(folder, "--model", "demo", "--store", tmp_path / "run.zarr", "--class-map", given)
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "run.zarr").exists()


def test_composite_with_another_method_is_refused_and_param_reaches_every_method(tmp_path):
    refused = invoke("demo:2", "--model", "demo", "--store", tmp_path / "r.zarr", "--method", "gradient",
                     "--composite", "epsilon")
    assert refused.exit_code == 2 and "--composite chooses LRP's rules, but --method gradient uses none" in \
        refused.stderr
    unknown = invoke("demo:2", "--model", "demo", "--store", tmp_path / "r.zarr", "--method", "gradient",
                     "--param", "steps=3")
    assert unknown.exit_code == 2 and "method gradient has no parameter 'steps'" in unknown.stderr
    assert not (tmp_path / "r.zarr").exists()
    result = invoke("demo:2", "--model", "demo", "--store", tmp_path / "ig.zarr", "--method", "integrated_gradients",
                    "--param", "steps=3")
    assert result.exit_code == 0, result.output
    assert datasets.open_store(tmp_path / "ig.zarr").attrs["parameters"] == {"steps": 3}


def test_verify_exits_0_on_an_intact_store_and_1_naming_each_damaged_chunk(tmp_path):
    from tests.datasets.helpers import damage_chunks

    path = tmp_path / "run.zarr"
    datasets.run("demo", "demo:20", path, batch_size=4, chunk=8, progress=False)
    intact = CliRunner().invoke(cli.main, ["verify", str(path)])
    assert intact.exit_code == 0 and "all 3 done chunks match their checksums; 20 of 20 samples done" in intact.output
    damage_chunks(path)
    damaged = CliRunner().invoke(cli.main, ["verify", str(path)])
    assert damaged.exit_code == 1, damaged.output
    for named in ("samples 0..7, array label", "samples 8..15, array relevance", "samples 16..19, array output",
                  "3 of 3 done chunks are damaged"):
        assert named in damaged.output
    missing = CliRunner().invoke(cli.main, ["verify", str(tmp_path)])
    assert missing.exit_code == 2 and "is not a relprop store" in missing.output
