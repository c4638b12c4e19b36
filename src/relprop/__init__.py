"""relprop: Layer-wise Relevance Propagation for any PyTorch model."""
from . import canonizers, composites, rules
from .engine import UnsupportedOperation, UnsupportedOpWarning
from .explanation import Explanation, Report
from .lrp import LRP, explain

__version__ = "0.1.0"

__all__ = ["LRP", "explain", "Explanation", "Report", "rules", "composites", "canonizers", "UnsupportedOperation",
           "UnsupportedOpWarning", "__version__"]
