"""Concepts: what the channels of a layer contribute to an explanation (Concept Relevance Propagation).

  conditional.py   heatmaps of the relevance that passes through chosen channels (one forward, batched backward)
  maximisation.py  the reference samples of each channel over a relprop run store (relevance maximisation)
  attribution_graph.py  the attribution graph: how much of an upper concept's relevance each lower concept gives
  masks.py         LRP with relevance masked or re-weighted at named layers and channels on the way down
  relevance.py     relevance of every channel of a layer, and the top concepts
  pages.py         HTML pages: one image's top concepts, a store's concept atlas (``relprop concepts``)
"""
from .conditional import Conditional, conditional, heads
from .attribution_graph import Graph, attribution_graph
from .masks import Masked, masked
from .maximisation import References, maximise, reference_heatmaps
from .relevance import concept_relevance, token_relevance, top_concepts

__all__ = ["Conditional", "conditional", "Graph", "attribution_graph", "Masked", "masked", "References", "maximise",
           "reference_heatmaps", "concept_relevance", "token_relevance", "top_concepts", "heads"]
