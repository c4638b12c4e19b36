"""`relprop spray` and `relprop export virelay` on a small store: what they write and how they refuse bad input."""
import numpy as np
import pytest
from click.testing import CliRunner

from relprop.analysis import spray
from relprop.cli import main

from tests.analysis.stores import write_store


def relprop(*arguments):
    """Run the command in this process (a subprocess per case would mostly time Python's imports)."""
    result = CliRunner().invoke(main, [str(a) for a in arguments])
    result.returncode = result.exit_code
    return result


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    relevance = rng.uniform(0, 0.05, (24, 3, 8, 8)).astype(np.float32)
    relevance[:12, :, :4] += 1
    relevance[12:, :, 4:] += 1
    return write_store(tmp_path / "run.zarr", relevance, np.zeros(24), np.ones((24, 2)), chunk=5,
                       preview=rng.integers(0, 256, (24, 3, 8, 8), dtype=np.uint8))


def test_spray_command_writes_analysis_and_report(store, tmp_path):
    result = relprop("spray", store, "--clusters", "2..3", "--neighbors", "4", "--eigenvalues", "6",
                     "--embed", "spectral", "--no-density", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "class-0: 24 samples" in result.stdout and "kmeans-2 sizes [12, 12]" in result.stdout
    assert "class-0: kNN graph of 24 samples: exact neighbour search (auto: exact below 200,000" in result.stdout
    assert (tmp_path / "report" / "index.html").is_file()
    assert sorted(spray.read(store, "class-0").clusters) == ["kmeans-2", "kmeans-3"]
    exported = relprop("export", "virelay", store, "--out", tmp_path / "project")
    assert exported.returncode == 0, exported.stderr
    # beside relprop's hidden marker of an output folder (the next export replaces the folder whole)
    assert sorted(p.name for p in (tmp_path / "project").iterdir() if not p.name.startswith(".")) == [
        "analysis.h5", "attribution.h5", "input.h5", "label-map.json", "project.yaml"]


@pytest.mark.parametrize("arguments, message", [
    (["--clusters", "1..4"], "start at 2"),
    (["--clusters", "many"], "--clusters takes auto"),
    (["--classes", "7"], "class 7 is out of range"),
    (["--classes", "a"], "--classes takes comma-separated"),
    (["--neighbor-search", "fast"], "'fast' is not one of 'auto', 'exact', 'approximate'"),
])
def test_spray_command_refuses_bad_arguments_with_the_fix(store, tmp_path, arguments, message):
    result = relprop("spray", store, *arguments, "--out", tmp_path / "report")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "report").exists()


def test_commands_on_a_missing_store_say_how_to_make_one(tmp_path):
    for command in (["spray"], ["export", "virelay"]):
        result = relprop(*command, tmp_path / "nothing.zarr", "--out", tmp_path / "out")
        assert result.returncode == 2 and "relprop run" in result.stderr, result.stderr


def test_spray_command_analyses_the_other_classes_and_names_small_and_skipped_ones(tmp_path):
    from tests.analysis.test_spray import store_with_small_classes

    store = store_with_small_classes(tmp_path / "run.zarr")
    result = relprop("spray", store, "--embed", "spectral", "--density", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "class-0: 40 samples" in result.stdout and "class-1: 4 samples" in result.stdout
    assert "class-1: hdbscan skipped" in result.stdout
    assert "fewer than 3 explained samples: class-2 (2)" in result.stdout
    page = (tmp_path / "report" / "index.html").read_text()
    assert "class-2 (2)" in page and "hdbscan skipped" in page


def test_export_without_a_spray_analysis_is_refused_and_writes_nothing(store, tmp_path):
    result = relprop("export", "virelay", store, "--out", tmp_path / "project")
    assert result.returncode == 2 and f"relprop spray {store}" in result.stderr, result.stderr
    assert not (tmp_path / "project").exists()


def test_spray_command_writes_its_report_beside_the_store_and_says_where(store, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = relprop("spray", store, "--neighbors", "4", "--eigenvalues", "6", "--embed", "spectral")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run-spray" / "index.html").is_file() and not list(elsewhere.iterdir())
    assert str(tmp_path / "run-spray" / "index.html") in result.stdout
    assert "most separated: kmeans-2" in result.stdout and "crossing clusters: kmeans-2 0.000" in result.stdout


def test_import_command_writes_a_store_spray_reads(tmp_path):
    from tests.datasets.test_imported import planted

    relevance, labels, images, _ = planted()
    for name, array in (("r", relevance), ("y", labels), ("x", images)):
        np.save(tmp_path / f"{name}.npy", array)
    result = relprop("import", tmp_path / "run.zarr", "--relevance", tmp_path / "r.npy", "--labels",
                     tmp_path / "y.npy", "--images", tmp_path / "x.npy", "--class-names", "cat,dog")
    assert result.returncode == 0, result.stderr
    assert "60 heatmaps of 2 classes" in result.stdout and "relprop spray" in result.stdout
    sprayed = relprop("spray", tmp_path / "run.zarr", "--embed", "spectral")
    assert sprayed.returncode == 0, sprayed.stderr
    assert "class-0: 30 samples" in sprayed.stdout and "class-1: 30 samples" in sprayed.stdout
    missing = relprop("import", tmp_path / "other.zarr", "--relevance", tmp_path / "r.npy")
    assert missing.returncode == 2 and "--labels is required" in missing.stderr
    again = relprop("import", tmp_path / "run.zarr", "--relevance", tmp_path / "r.npy", "--labels", tmp_path / "y.npy")
    assert again.returncode == 2 and "--overwrite" in again.stderr
