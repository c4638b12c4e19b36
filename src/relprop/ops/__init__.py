"""Op families, one file each, registered in ``table.HANDLERS`` when imported (``load_families``, by the engine).

  plain.py            ops whose gradient x input is their rule, so they take the plain gradient: shapes and sums,
                      rectifiers (ReLU), selections (max-pooling)
  elementwise.py      element-wise activations: relevance passes through; other element-wise maths (no LRP rule)
  products.py         products of activations (uniform split, gates) and division
  linear.py           linear, convolution, transposed convolution, average pooling under a composite's rule
  pooling.py          max-pooling (and average pooling off a fixed window) under a composite's window rule
  norms.py            batch, layer, group and RMS norm (std as constant; batch norm merged into the layer before it)
  message_passing.py  message-passing aggregation (scatter/index/segment sums, means, max) and GAT's edge softmax
  attention.py        softmax, log-softmax, fused and multi-head attention
  recurrent.py        LSTM, GRU and RNN layers run as their time steps (Arras et al. 2017 for LRP)
  clusters.py         relprop.neuralize's modules (min-pooling over competitors, cluster discriminants), ruled whole
  custom.py           custom torch.autograd.Functions (found from their outputs; rules registered by the user)
Each family file also holds the family's DeepLift handler and its autograd Functions; what those share (inputs and
references in one batch, the path-averaged Jacobian) is in reference.py. What a call is, read from its name and
arguments (its family, ``bind``, in-place variants), is signatures.py: ops import nothing from the engine.
"""
import importlib

FAMILY_MODULES = ("plain", "elementwise", "products", "linear", "pooling", "norms", "attention", "recurrent",
                  "custom", "message_passing", "clusters")  # message_passing after products: it refines division


def load_families():
    """Import every family file, so that each registers its handler (the engine calls this once, at import)."""
    for module in FAMILY_MODULES:
        importlib.import_module(f"{__name__}.{module}")
