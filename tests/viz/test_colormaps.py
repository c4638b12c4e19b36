import matplotlib
import numpy as np
import pytest

from relprop.viz import colormaps


def test_coldnhot_is_registered_with_matplotlib_and_black_at_zero():
    cmap = matplotlib.colormaps["coldnhot"]
    assert np.allclose(cmap(0.0)[:3], (0, 1, 1))  # strongest negative: cyan
    assert np.allclose(cmap(1.0)[:3], (1, 1, 0))  # strongest positive: yellow
    assert np.allclose(cmap(0.5)[:3], (0, 0, 0), atol=0.01)  # zero relevance: black


def test_matplotlib_maps_are_found_by_name():
    assert colormaps.get("bwr").name == "bwr"
    assert colormaps.get("seismic").name == "seismic"
    assert colormaps.get(matplotlib.colormaps["viridis"]).name == "viridis"


def test_unknown_map_names_close_matches():
    with pytest.raises(ValueError, match="did you mean.*bwr"):
        colormaps.get("bwrr")
