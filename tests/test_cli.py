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

import relprop
from relprop.demo import KINDS, generate


def relprop_cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # several run at once on a small machine
    return subprocess.run([sys.executable, "-m", "relprop", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def invoke(*args):
    """The command run in this process (no interpreter start): returncode, stdout and stderr as a subprocess's."""
    from click.testing import CliRunner

    from relprop.cli import main

    result = CliRunner().invoke(main, [str(arg) for arg in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


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
    factory.write_text("import torch\n\ndef make():\n    torch.manual_seed(0)\n"
                       "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), "
                       "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))\n")
    (root / "kept").mkdir()
    (root / "kept" / "notes.txt").write_text("mine")
    (root / "factory_out").mkdir()  # empty: taken as it is
    outputs = root / "outputs.py"
    outputs.write_text(
        "import collections\nimport torch\n\nPair = collections.namedtuple('Pair', 'features logits')\n\n"
        "class Net(torch.nn.Module):\n    def __init__(self, kind):\n        super().__init__()\n"
        "        self.kind = kind\n        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), "
        "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())\n        self.head = torch.nn.Linear(4, 3)\n\n"
        "    def forward(self, x):\n        features = self.body(x)\n        logits = self.head(features)\n"
        "        return {'dict': {'features': features, 'logits': logits}, 'tuple': (features, logits),\n"
        "                'named': Pair(features, logits)}[self.kind]\n\n"
        "def as_dict():\n    return Net('dict')\n\ndef as_tuple():\n    return Net('tuple')\n\n"
        "def as_named():\n    return Net('named')\n")
    mixed = root / "mixed"  # two usable images, one the convolution cannot take, one smaller than occlusion's window
    mixed.mkdir()
    rng = np.random.default_rng(3)
    for name, side in (("a", 16), ("b", 16), ("dot", 1), ("small", 6)):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(mixed / f"{name}.png")
    nested = root / "nested"
    for name in ("top.png", "cats/a.png", "cats/young/b.png", ".hidden/c.png"):
        (nested / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(nested / name)
    one = sorted(images.glob("shape1-*.png"))[0]
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
                    "--out", root / "factory_out"],
        "foreign_folder": ["explain", one, "--model", "demo", "--out", root / "kept"],
        "deeplift": ["explain", sorted(images.glob("shape1-*.png"))[0], "--model", "demo", "--method", "deeplift",
                     "--out", root / "deeplift"],
        "occlusion_with_param": ["explain", images, "--model", "demo", "--method", "occlusion", "--param",
                                 "epsilon=0.1", "--out", root / "occlusion_with_param"],
        "composites": ["composites"],
        "rules": ["rules"],
    }
    in_process = {
        "mixed_lrp": ["explain", mixed, "--model", f"{factory}:make", "--out", root / "mixed_lrp"],
        "mixed_occlusion": ["explain", mixed, "--model", f"{factory}:make", "--method", "occlusion",
                            "--out", root / "mixed_occlusion"],
        "only_unusable": ["explain", mixed / "dot.png", "--model", f"{factory}:make", "--out", root / "only_unusable"],
        "gradient": ["explain", one, "--model", "demo", "--method", "gradient", "--out", root / "gradient"],
        "device_gpu": ["explain", one, "--model", "demo", "--device", "gpu", "--out", root / "device_gpu"],
        "device_mps": ["explain", one, "--model", "demo", "--device", "mps", "--out", root / "device_mps"],
        "device_cuda7": ["explain", one, "--model", "demo", "--device", "cuda:7", "--out", root / "device_cuda7"],
        "occlusion_window": ["explain", one, "--model", "demo", "--method", "occlusion", "--param", "window=16,16",
                             "--param", "stride=16", "--format", "npy", "--out", root / "occlusion_window"],
        "integrated_steps": ["explain", one, "--model", "demo", "--method", "integrated_gradients", "--param",
                             "steps=4", "--param", "method=riemann_trapezoid", "--out", root / "integrated_steps"],
        "smoothgrad_noise": ["explain", one, "--model", "demo", "--method", "smoothgrad", "--param", "n_samples=2",
                             "--param", "noise_level=0.2", "--param", "seed=3", "--out", root / "smoothgrad_noise"],
        "deeplift_baseline": ["explain", one, "--model", "demo", "--method", "deeplift", "--param",
                              "baseline=0.5,0,-0.5", "--out", root / "deeplift_baseline"],
        "lrp_epsilon": ["explain", one, "--model", "demo", "--param", "epsilon=0.25", "--out", root / "lrp_epsilon"],
        "misspelt_param": ["explain", one, "--model", "demo", "--method", "integrated_gradients", "--param", "step=4",
                           "--out", root / "misspelt_param"],
        "badly_typed_param": ["explain", one, "--model", "demo", "--method", "occlusion", "--param", "window=big",
                              "--out", root / "badly_typed_param"],
        "dict_model": ["explain", mixed / "a.png", "--model", f"{outputs}:as_dict", "--out", root / "dict_model"],
        "dict_output": ["explain", mixed / "a.png", "--model", f"{outputs}:as_dict", "--output", "logits",
                        "--out", root / "dict_output"],
        "tuple_output": ["explain", mixed / "a.png", "--model", f"{outputs}:as_tuple", "--output", "1",
                         "--out", root / "tuple_output"],
        "named_output": ["explain", mixed / "a.png", "--model", f"{outputs}:as_named", "--output", "logits",
                         "--out", root / "named_output"],
        "missing_output": ["explain", mixed / "a.png", "--model", f"{outputs}:as_dict", "--output", "scores",
                           "--out", root / "missing_output"],
        "nested": ["explain", nested, "--model", f"{factory}:make", "--out", nested / "heatmaps"],
        "help": ["explain", "--help"],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(relprop_cli, *args) for name, args in calls.items()}
        results = {name: invoke(*args) for name, args in in_process.items()}  # meanwhile, here
        results.update({name: future.result() for name, future in futures.items()})
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
    ("unknown_model", "unknown model spec 'resnet50'; use demo, demo-watermark, torchvision:NAME"),
])
def test_unusable_arguments_exit_2_with_one_line_and_write_nothing(runs, name, message):
    root, results = runs
    result = results[name]
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (root / name).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(f".{name}")]  # no staging folder left behind


def test_user_factory_model_with_own_size_and_target_writes_into_an_empty_folder(runs):
    root, results = runs
    result = results["factory"]
    assert result.returncode == 0, result.stderr
    out = root / "factory_out"
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
    assert refused.returncode == 2 and "method occlusion has no parameter 'epsilon'" in refused.stderr
    assert not (root / "occlusion_with_param").exists()


def strict_json(path: Path):
    """summary.json read by a parser that refuses NaN and Infinity (as JSON does)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_listings_show_whole_first_sentences_and_real_parameters(runs):
    _, results = runs
    composites, rules = (" ".join(results[name].stdout.split()) for name in ("composites", "rules"))
    assert ("AttnLRP (Achtibat et al. 2024) for transformers: softmax by its gradient x input, products of "
            "activations split uniformly, norms and element-wise activations pass relevance through (std as a "
            "constant).") in composites
    assert "exactly when biases are zero." in composites
    assert "*args" not in rules and "pass Relevance passes through unchanged" in rules
    assert "used for activations. ()" in rules and "winner-take-all for max. ()" in rules


def test_progress_is_one_line_per_batch_when_stderr_is_not_a_terminal(runs):
    _, results = runs
    lines = [line for line in results["demo_model"].stderr.splitlines() if "images/s" in line]
    assert [line.split(" (")[0] for line in lines] == ["relprop: 3/5 images", "relprop: 5/5 images"]


def test_an_image_the_model_cannot_take_is_skipped_named_and_the_rest_explained(runs):
    root, results = runs
    for name, skipped in (("mixed_lrp", ["dot.png"]), ("mixed_occlusion", ["dot.png", "small.png"])):
        result = results[name]
        assert result.returncode == 1, result.stderr
        summary = strict_json(root / name / "summary.json")
        assert [Path(failure["file"]).name for failure in summary["failed"]] == skipped
        explained = sorted(Path(record["file"]).name for record in summary["images"])
        assert explained == sorted({"a.png", "b.png", "dot.png", "small.png"} - set(skipped))
        for file in skipped:
            assert f"skipped {root / 'mixed' / file}: " in result.stderr
    assert "window (8, 8) is larger than a sample" in results["mixed_occlusion"].stderr
    only = results["only_unusable"]  # nothing to keep: the command cannot run as given
    errors = [line for line in only.stderr.splitlines() if "images/s" not in line]  # progress lines aside
    assert only.returncode == 2 and len(errors) == 1 and "no image could be explained" in errors[0]
    assert "dot.png" in errors[0]
    assert not (root / "only_unusable").exists()


def test_summary_is_strict_json_with_null_for_methods_without_a_residual(runs):
    root, results = runs
    assert results["gradient"].returncode == 0, results["gradient"].stderr
    (record,) = strict_json(root / "gradient" / "summary.json")["images"]
    assert record["residual"] is None and isinstance(record["output"], float)


@pytest.mark.parametrize("name, device", [("device_gpu", "'gpu'"), ("device_mps", "'mps'"),
                                          ("device_cuda7", "cuda:7")])
def test_devices_this_machine_lacks_exit_2_with_one_line_naming_the_valid_ones(runs, name, device):
    root, results = runs
    result = results[name]
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"--device {device}" in result.stderr and "valid choices: cpu" in result.stderr
    assert not (root / name).exists()


def test_every_method_takes_its_own_parameters_typed_and_recorded(runs):
    root, results = runs
    expected = {
        "occlusion_window": {"window": [16, 16], "stride": [16, 16], "baseline": 0.0, "incremental": None},
        "integrated_steps": {"baseline": 0.0, "steps": 4, "method": "riemann_trapezoid"},
        "smoothgrad_noise": {"noise_level": 0.2, "n_samples": 2, "seed": 3},
        "deeplift_baseline": {"baseline": [0.5, 0.0, -0.5], "multiply_by_inputs": True, "eps": 1e-10,
                              "explain_logits": False},
        "lrp_epsilon": {"epsilon": 0.25, "stabilizer": 1e-6, "zero_bias": False},
    }
    for name, parameters in expected.items():
        assert results[name].returncode == 0, results[name].stderr
        assert strict_json(root / name / "summary.json")["parameters"] == parameters
    # four 16x16 windows on a 32x32 image: relevance is one value per window and channel-independent
    (record,) = strict_json(root / "occlusion_window" / "summary.json")["images"]
    relevance = np.load(root / "occlusion_window" / record["relevance"])
    blocks = relevance.reshape(3, 2, 16, 2, 16)
    assert np.allclose(blocks, blocks[:, :, :1, :, :1]) and np.allclose(relevance, relevance[:1])
    assert len(np.unique(relevance.round(6))) > 1


def test_unknown_or_badly_typed_parameters_exit_2_naming_the_valid_ones(runs):
    _, results = runs
    misspelt, badly = results["misspelt_param"], results["badly_typed_param"]
    assert misspelt.returncode == 2 and misspelt.stderr.count("\n") == 1
    assert ("method integrated_gradients has no parameter 'step'; its parameters: baseline, steps, method"
            in misspelt.stderr)
    assert badly.returncode == 2 and "--param window takes a positive int or one per dimension" in badly.stderr


def test_dict_tuple_and_object_outputs_are_picked_with_output_and_the_error_points_at_it(runs):
    root, results = runs
    refused = results["dict_model"]
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "a dict with keys features, logits" in refused.stderr and "--output KEY" in refused.stderr
    assert "output=lambda" not in refused.stderr
    for name, key in (("dict_output", "logits"), ("tuple_output", "1"), ("named_output", "logits")):
        assert results[name].returncode == 0, results[name].stderr
        summary = strict_json(root / name / "summary.json")
        assert summary["output"] == key and summary["images"][0]["predicted"] in (0, 1, 2)
    missing = results["missing_output"]
    assert missing.returncode == 2 and "--output scores: the model returned a dict with keys features, logits" \
        in missing.stderr


def test_sub_folders_are_explained_and_mirrored_in_out(runs):
    root, results = runs
    result = results["nested"]
    assert result.returncode == 0, result.stderr
    out = root / "nested" / "heatmaps"
    summary = strict_json(out / "summary.json")
    assert [record["heatmap"] for record in summary["images"]] == [
        "cats/a.heatmap.png", "cats/young/b.heatmap.png", "top.heatmap.png"]
    assert all((out / record[key]).is_file() for record in summary["images"] for key in ("heatmap", "overlay"))
    assert "sub-folders" in " ".join(results["help"].stdout.split())


def test_a_folder_holding_other_files_is_refused_and_left_alone(runs):
    root, results = runs
    result = results["foreign_folder"]
    assert result.returncode == 2 and "holds files relprop did not write (notes.txt)" in result.stderr
    assert [p.name for p in (root / "kept").iterdir()] == ["notes.txt"]


# ---- the output folder over several runs, memory ------------------------------------------------------------
def test_a_second_run_replaces_the_folder_as_a_whole_and_stale_staging_folders_are_removed(images, tmp_path):
    out = tmp_path / "out"
    first = invoke("explain", *sorted(images.glob("shape*.png"))[:2], "--model", "demo", "--out", out)
    assert first.returncode == 0, first.stderr
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = tmp_path / f".out.pid{finished.pid}.abcd1234"  # left by a killed run
    stale.mkdir()
    (stale / "half.png").write_bytes(b"")
    live = tmp_path / f".out.pid{os.getpid()}.efgh5678"  # a run still going
    live.mkdir()
    last = sorted(images.glob("shape*.png"))[3]
    second = invoke("explain", last, "--model", "demo", "--out", out)
    assert second.returncode == 0, second.stderr
    stem = last.stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".relprop-output", "summary.json", f"{stem}.heatmap.png", f"{stem}.overlay.png"])
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.pid" + f"{os.getpid()}.efgh5678", "out"]


def test_batches_that_will_not_fit_in_memory_are_refused_before_running(images, tmp_path, monkeypatch):
    from relprop import memory

    one = sorted(images.glob("shape*.png"))[0]
    # The demo model at 32x32 needs about 1.3 MiB per image with LRP; pretend that only two images fit.
    monkeypatch.setattr(memory, "available", lambda device: 3 * 2 ** 20)
    result = invoke("explain", *sorted(images.glob("shape*.png")), "--model", "demo", "--batch-size", "4",
                    "--out", tmp_path / "small")
    assert result.returncode == 2, result.stderr
    assert "explaining 4 images of 32x32 pixels at once needs about" in result.stderr
    assert "use --batch-size 2 or a smaller --size" in result.stderr
    monkeypatch.setattr(memory, "available", lambda device: 10 * 2 ** 10)
    result = invoke("explain", one, "--model", "demo", "--size", "256", "--out", tmp_path / "large")
    assert result.returncode == 2 and "use a smaller --size" in result.stderr
    assert not (tmp_path / "small").exists() and not (tmp_path / "large").exists()


def test_a_failing_batch_is_explained_image_by_image_to_find_the_culprit_and_a_working_one_at_once():
    from relprop.attribution import Gradient
    from relprop.datasets.images import explain_images

    class Picky(torch.nn.Module):
        """Refuses black images; counts its calls."""

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(12, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if (x.flatten(1).amax(1) == 0).any():
                raise ValueError("a black image")
            return self.linear(x.flatten(1))

    model = Picky()
    items = [("a", torch.rand(3, 2, 2)), ("black", torch.zeros(3, 2, 2)), ("c", torch.rand(3, 2, 2))]
    results = list(explain_images(Gradient(model), items, None, "cpu"))
    assert [(done if isinstance(result, str) else [key for key, _ in done]) for done, result in results] == [
        ["a"], ("black", items[1][1]), ["c"]]
    assert results[1][1] == "a black image"
    for done, result in (results[0], results[2]):
        expected = Gradient(model)(done[0][1][None]).relevance  # the same image explained on its own
        assert torch.allclose(result.relevance, expected)
    model.calls = 0
    (done, result), = explain_images(Gradient(model), [items[0], items[2]], None, "cpu")
    assert [key for key, _ in done] == ["a", "c"] and model.calls == 1  # the normal path: one pass


def test_without_an_atomic_exchange_the_folder_is_still_replaced_whole(images, tmp_path, monkeypatch):
    from relprop import outputs

    monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)  # a system without renameat2
    files = sorted(images.glob("shape*.png"))
    out = tmp_path / "out"
    assert invoke("explain", files[0], "--model", "demo", "--out", out).returncode == 0
    assert invoke("explain", files[1], "--model", "demo", "--out", out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".relprop-output", "summary.json", f"{files[1].stem}.heatmap.png", f"{files[1].stem}.overlay.png"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_without_a_size_an_image_too_large_to_fit_alone_is_skipped_and_the_rest_explained(tmp_path, monkeypatch):
    from relprop import memory
    from relprop.loading import load_model

    factory = tmp_path / "tiny.py"
    factory.write_text("import torch\n\ndef make():\n    torch.manual_seed(0)\n"
                       "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), "
                       "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))\n")
    folder = tmp_path / "images"
    folder.mkdir()
    for name, side in (("large", 64), ("small", 16)):
        Image.new("RGB", (side, side), (200, 100, 50)).save(folder / f"{name}.png")
    model = load_model(f"{factory}:make").model
    lrp = relprop.LRP(model)
    small, large = (memory.needed_bytes(lrp, memory.footprint(model, (3, side, side)), 1, (3, side, side))
                    for side in (16, 64))
    monkeypatch.setattr(memory, "available", lambda device: (small + large) // 2)
    result = invoke("explain", folder, "--model", f"{factory}:make", "--out", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    summary = strict_json(tmp_path / "out" / "summary.json")
    assert [Path(record["file"]).name for record in summary["images"]] == ["small.png"]
    (failure,) = summary["failed"]
    assert Path(failure["file"]).name == "large.png" and "use a smaller --size" in failure["error"]


def test_the_current_folder_is_never_an_output_folder(images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = sorted(images.glob("shape*.png"))[0]
    for out in (".", ".."):
        result = invoke("explain", one, "--model", "demo", "--out", out)
        assert result.returncode == 2 and "is the current folder or contains it" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_segmentation_model_is_explained_per_location_and_recorded_without_a_single_class(images, tmp_path):
    factory = tmp_path / "segment.py"
    factory.write_text("import torch\n\ndef make():\n    torch.manual_seed(0)\n"
                       "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), "
                       "torch.nn.Conv2d(4, 2, 1))\n")
    out = tmp_path / "out"
    result = invoke("explain", images / "shape0-circle.png", "--model", f"{factory}:make", "--size", "16", "--out", out)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads((out / "summary.json").read_text())["images"]
    assert record["predicted"] is None and record["target"] is None
    assert record["output"] is not None
    fixed = invoke("explain", images / "shape0-circle.png", "--model", f"{factory}:make", "--size", "16", "--target", "1",
                   "--out", tmp_path / "fixed")
    assert fixed.returncode == 0, fixed.stderr
    (record,) = json.loads((tmp_path / "fixed" / "summary.json").read_text())["images"]
    assert record["target"] == 1 and record["predicted"] is None


def test_explain_refuses_a_composite_given_with_another_method(images, tmp_path):
    refused = invoke("explain", images, "--model", "demo", "--method", "gradient", "--composite", "epsilon",
                     "--out", tmp_path / "out")
    assert refused.returncode == 2 and "--composite chooses LRP's rules, but --method gradient uses none" in \
        refused.stderr
    assert not (tmp_path / "out").exists()
