"""relprop.outputs.Staging: an output folder is replaced whole or not at all, and never one relprop did not write."""
import os

import pytest

from relprop import outputs
from relprop.outputs import OutputError, Staging


def test_a_committed_folder_replaces_the_earlier_one_whole_and_an_uncommitted_one_vanishes(tmp_path):
    out = tmp_path / "out"
    with Staging(out) as staging:
        (staging.path / "first.txt").write_text("1")
        staging.commit()
    with Staging(out) as staging:
        (staging.path / "second.txt").write_text("2")
        staging.commit()
    assert sorted(path.name for path in out.iterdir()) == [".relprop-output", "second.txt"]
    with Staging(out) as staging:
        (staging.path / "third.txt").write_text("3")  # no commit: a failed run
    assert sorted(path.name for path in out.iterdir()) == [".relprop-output", "second.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_without_an_atomic_exchange_two_renames_replace_it(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)
    out = tmp_path / "out"
    for name in ("first.txt", "second.txt"):
        with Staging(out) as staging:
            (staging.path / name).write_text(name)
            staging.commit()
    assert sorted(path.name for path in out.iterdir()) == [".relprop-output", "second.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_folders_that_are_not_relprops_are_refused_with_the_reason(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file is a file; give a folder"):
        Staging(tmp_path / "file")
    (tmp_path / "mine").mkdir()
    for name in "abcd":
        (tmp_path / "mine" / name).write_text(name)
    with pytest.raises(OutputError, match=r"mine holds files relprop did not write \(a, b, c, \.\.\.\)"):
        Staging(tmp_path / "mine")
    monkeypatch.chdir(tmp_path / "mine")
    with pytest.raises(OutputError, match="is the current folder or contains it"):
        Staging(tmp_path)


def test_staging_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    stale = tmp_path / ".out.pid999999999.abcd1234"
    live = tmp_path / f".out.pid{os.getpid()}.efgh5678"
    stale.mkdir()
    live.mkdir()
    outputs.remove_stale_staging(tmp_path / "out")
    assert not stale.exists() and live.exists()
