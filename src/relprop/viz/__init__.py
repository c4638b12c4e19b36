"""Seeing relevance: heatmaps and overlays for images, bars and lines for 1-D relevance, coloured HTML for text."""
from . import colormaps
from .charts import bars, line
from .heatmap import colorize, grid, heatmap, normalize, overlay, reduce_channels
from .save import atomic_path, save_figure, save_image, save_text
from .text import html, page

__all__ = ["colormaps", "heatmap", "overlay", "grid", "colorize", "normalize", "reduce_channels", "bars", "line",
           "html", "page", "save_image", "save_figure", "save_text", "atomic_path"]
