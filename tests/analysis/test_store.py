"""Reading explanation stores for the analyses: damaged chunks are named, never read as data."""
import shutil

import numpy as np
import pytest

import relprop.datasets as datasets
from relprop.analysis import spray
from relprop.analysis import store as stores

from tests.datasets.helpers import damage_chunks


def test_analyses_refuse_a_damaged_chunk_naming_it_and_read_the_intact_ones(tmp_path):
    finished, damaged = tmp_path / "finished.zarr", tmp_path / "damaged.zarr"
    datasets.run("demo", "demo:20", finished, batch_size=4, chunk=8, progress=False)
    shutil.copytree(finished, damaged)
    damage_chunks(damaged)
    root = stores.open_store(damaged)
    with pytest.raises(ValueError, match=r"samples 0..7, array label: its values do not match their checksum"):
        stores.classes_of(root)
    with pytest.raises(ValueError, match=r"samples 8..15, array relevance: unreadable .*relprop verify"):
        list(stores.read_chunks(root["relevance"], np.arange(20), 8))
    with pytest.raises(ValueError, match=r"samples 0..7, array label"):
        spray.run(damaged, [0], progress=lambda text: None)
    intact = [block for _, block in stores.read_chunks(root["relevance"], np.arange(16, 20), 8)]
    expected = datasets.open_store(finished)["relevance"][16:20]
    assert np.asarray(intact[0]).tobytes() == np.asarray(expected).tobytes()
