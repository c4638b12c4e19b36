"""The embedded demo: a small CNN shipped with its weights, trained on procedurally generated shapes.

``relprop demo`` (or :func:`relprop.demo.run`) explains a few images with several composites and shows, next to
each heatmap, the share of positive relevance that lands inside the object that decides the class.
"""
from .model import KINDS, MEAN, SIZE, STD, ShapeNet, load, normalize
from .shapes import generate

__all__ = ["ShapeNet", "load", "normalize", "generate", "KINDS", "SIZE", "MEAN", "STD"]
