"""relprop correct end to end on a planted shortcut: store and SpRAy result written here, model and data from a
factory file, the corrected model loaded back as a --model spec."""
import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from analysis.stores import write_store
from relprop.analysis import spray
from relprop.cli import main
from relprop.correct import CAV, p_clarc
from relprop.loading import load_model

from . import planted

FACTORY = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
import torch
from correct import planted


def model():
    return planted.trained()


def data():
    images, labels, _ = planted.generate(160, 7)
    return torch.utils.data.TensorDataset(images, labels)
"""


def _store(tmp_path, with_spray=True):
    (tmp_path / "net.py").write_text(FACTORY)
    images, labels, marked = planted.generate(160, 7)
    path = write_store(tmp_path / "run.zarr", np.zeros((160, 1, 8, 8), np.float32), labels.numpy(),
                       np.eye(2)[labels.numpy()])
    if with_spray:
        members = np.flatnonzero(labels.numpy() == 1)
        spray.write(path, spray.Analysis("class-1", members, np.zeros(3), np.zeros((len(members), 3)), 2,
                                         {"kmeans-2": marked.numpy()[members].astype(np.int64)}))
    return path


def _correct(tmp_path, *extra):
    arguments = [str(tmp_path / "run.zarr"), "--class", "1", "--layer", planted.LAYER, "--model",
                 f"{tmp_path / 'net.py'}:model", "--data", f"{tmp_path / 'net.py'}:data", "--out",
                 str(tmp_path / "fixed"), *extra]
    return CliRunner().invoke(main, ["correct", *arguments])


def test_correct_writes_a_model_usable_as_model_spec_and_a_report_showing_the_shortcut_gone(tmp_path):
    _store(tmp_path)
    result = _correct(tmp_path, "--cluster", "1", "--method", "p-clarc")
    assert result.exit_code == 0, result.output
    out = tmp_path / "fixed"
    summary = json.loads((out / "verification.json").read_text())
    before, after = summary["metrics"]["before"], summary["metrics"]["after (p-clarc)"]
    assert after["artifact_sensitivity"] < 0.2 * before["artifact_sensitivity"]
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.03
    assert after["tcav"] == 0.0
    page = (out / "report" / "index.html").read_text()
    assert "artifact_sensitivity" in page and "heatmaps/model1-0.png" in page and "http" not in page
    assert (out / "report" / "heatmaps" / "model1-0.png").is_file()
    loaded = load_model(str(out / "model.json"))
    x = planted.add_artifact(planted.unmarked(8, 2)[0])
    expected = p_clarc(planted.trained(), CAV.load(out / "cav.safetensors"))(x)
    torch.testing.assert_close(loaded.model(x), expected)
    # the corrected model explains a data set into a store as any --model does
    result = CliRunner().invoke(main, ["run", f"{tmp_path / 'net.py'}:data", "--model", str(out / "model.json"),
                                       "--store", str(tmp_path / "fixed.zarr")])
    assert result.exit_code == 0, result.output
    from relprop.datasets import open_store

    assert open_store(tmp_path / "fixed.zarr").attrs["model"] == str(out / "model.json")


def test_correct_fine_tunes_with_rr_clarc(tmp_path):
    _store(tmp_path)
    result = _correct(tmp_path, "--cluster", "1", "--method", "rr-clarc", "--epochs", "3", "--lr", "0.01",
                         "--penalty", "10", "--train", "after")
    assert result.exit_code == 0, result.output
    out = tmp_path / "fixed"
    summary = json.loads((out / "verification.json").read_text())
    assert summary["metrics"]["after (rr-clarc)"]["artifact_sensitivity"] < \
        0.5 * summary["metrics"]["before"]["artifact_sensitivity"]
    assert (out / "weights.safetensors").is_file() and not (tmp_path / ".fixed.training").exists()
    record = json.loads((out / "model.json").read_text())
    assert record["finetuned"] == "weights.safetensors" and record["cav"] is None
    load_model(str(out / "model.json"))


def test_correct_refuses_a_missing_cluster_a_missing_layer_and_a_store_without_spray(tmp_path):
    _store(tmp_path)
    result = _correct(tmp_path, "--cluster", "4")
    assert result.exit_code == 2 and "no cluster 4; its clusters are 0, 1" in result.output
    result = CliRunner().invoke(main, ["correct", str(tmp_path / "run.zarr"), "--class", "1", "--cluster", "1",
                                       "--layer", "body.9", "--model", f"{tmp_path / 'net.py'}:model", "--data",
                                       f"{tmp_path / 'net.py'}:data", "--out", str(tmp_path / "fixed")])
    assert result.exit_code == 2 and "no module named 'body.9'" in result.output
    assert not (tmp_path / "fixed").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    _store(bare, with_spray=False)
    result = _correct(bare, "--cluster", "1")
    assert result.exit_code == 2 and "no SpRAy results for class 1" in result.output


def test_a_json_model_spec_that_is_not_a_corrected_model_is_refused_with_the_fix(tmp_path):
    import pytest

    from relprop.loading import LoadError

    (tmp_path / "other.json").write_text('{"name": "something else"}')
    with pytest.raises(LoadError, match="not a corrected model written by `relprop correct`"):
        load_model(str(tmp_path / "other.json"))
    with pytest.raises(LoadError, match="cannot read the corrected model"):
        load_model(str(tmp_path / "missing.json"))
