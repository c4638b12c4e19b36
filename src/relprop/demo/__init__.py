"""The embedded demo: a small CNN shipped with its weights, trained on procedurally generated shapes.

These are the demo's assets (``model``, ``shapes``, the "Clever Hans" variant ``watermark``): they import no other
part of relprop, so the tools below the command line (model loading, data-set sources, evaluation) may use them.
``relprop demo`` (:func:`relprop.tour.showcase.run`, the tour in :mod:`relprop.tour`, above the tools it
drives) explains a few images with several composites and shows, next to each heatmap, the share of positive
relevance that lands inside the object that decides the class.
"""
from .model import KINDS, MEAN, SIZE, STD, ShapeNet, load, normalize
from .shapes import generate

__all__ = ["ShapeNet", "load", "normalize", "generate", "KINDS", "SIZE", "MEAN", "STD"]
