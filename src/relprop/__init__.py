"""relprop: Layer-wise Relevance Propagation for any PyTorch model."""
from . import attribution, canonizers, composites, neuralize, rules
from .engine import UnsupportedOperation, UnsupportedOpWarning
from .engine.batch import BatchMixingWarning
from .ops.custom import register_function
from .explanation import Explanation, Report
from .attribution.lrp import LRP, explain
from .compare import Comparison, compare
from .correct import saved as _saved  # noqa: F401  registers a corrected model's model.json with load_model

__version__ = "0.1.0"

__all__ = ["LRP", "explain", "compare", "Comparison", "Explanation", "Report", "rules", "composites", "canonizers",
           "attribution", "neuralize", "viz", "UnsupportedOperation", "UnsupportedOpWarning", "BatchMixingWarning",
           "register_function", "__version__"]


def __getattr__(name):
    # viz (matplotlib), demo and evaluate load on first use, so `import relprop` stays as quick as torch allows
    if name in ("viz", "demo", "evaluate"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
