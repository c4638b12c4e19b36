"""relprop: Layer-wise Relevance Propagation for any PyTorch model."""
from typing import TYPE_CHECKING

from .lazy import attach

if TYPE_CHECKING:  # what the names below are, for readers, type checkers and the reference pages
    from . import attribution, canonizers, composites, demo, evaluate, neuralize, rules, viz
    from .attribution.lrp import LRP, explain
    from .comparison import Comparison, compare
    from .engine import UnsupportedOperation, UnsupportedOpWarning
    from .engine.batch import BatchMixingWarning
    from .explanation import Explanation, Report
    from .ops.custom import register_function

__version__ = "0.1.0"

# Public name -> the module that defines it. Everything loads on first use (PEP 562), so commands that never touch
# a model (`relprop spray`, `relprop export` on a store) do not pay for importing torch: about 500 MiB of memory.
_NAMES = {
    "LRP": "attribution.lrp", "explain": "attribution.lrp", "compare": "comparison", "Comparison": "comparison",
    "Explanation": "explanation", "Report": "explanation", "UnsupportedOperation": "engine",
    "UnsupportedOpWarning": "engine", "BatchMixingWarning": "engine.batch", "register_function": "ops.custom",
}
_MODULES = ("rules", "composites", "canonizers", "attribution", "neuralize", "viz", "demo", "evaluate")

__all__ = ["LRP", "explain", "compare", "Comparison", "Explanation", "Report", "rules", "composites", "canonizers",
           "attribution", "neuralize", "viz", "UnsupportedOperation", "UnsupportedOpWarning", "BatchMixingWarning",
           "register_function", "__version__"]


__getattr__, __dir__ = attach(__name__, _NAMES, _MODULES)
