"""Colour maps for relevance: matplotlib's by name, plus ``coldnhot`` (cyan-blue-black-red-yellow).

All relevance colour maps here are diverging: the middle colour means zero relevance, so a map normalised
symmetrically around zero shows positive and negative evidence with the same weight.
"""
from __future__ import annotations

import difflib

import matplotlib
from matplotlib.colors import Colormap, LinearSegmentedColormap

# Anchor colours at positions in [0, 1]; 0.5 is zero relevance. Cold (negative) goes from black through blue to
# cyan, hot (positive) from black through red to yellow, so the strongest evidence is also the brightest.
ANCHORS = {
    "coldnhot": [(0.0, "#00ffff"), (0.25, "#0000ff"), (0.5, "#000000"), (0.75, "#ff0000"), (1.0, "#ffff00")],
}


def _register() -> None:
    for name, anchors in ANCHORS.items():
        if name not in matplotlib.colormaps:
            matplotlib.colormaps.register(LinearSegmentedColormap.from_list(name, anchors, N=257), name=name)


def get(cmap: str | Colormap) -> Colormap:
    """A colour map by name (``coldnhot`` or any of matplotlib's, e.g. ``bwr``, ``seismic``), or as given.

    Args:
        cmap: A name or a matplotlib Colormap.

    Returns:
        The Colormap.

    Raises:
        TypeError: for another type.
        ValueError: for an unknown name (with the closest one).
    """
    if not isinstance(cmap, (str, Colormap)):
        raise TypeError(f"cmap must be a colour map name or a matplotlib Colormap, got {type(cmap).__name__}")
    if isinstance(cmap, Colormap):
        found = cmap
    else:
        try:
            found = matplotlib.colormaps[cmap]
        except KeyError:
            close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(f"unknown colour map {cmap!r}; {hint}relevance reads best on a diverging map such as "
                             "bwr, seismic or coldnhot") from None
    if isinstance(found, LinearSegmentedColormap) and found.N % 2 == 0:
        found = found.resampled(found.N + 1)  # an odd table has an exact middle entry: zero gets the middle colour
    return found


_register()
