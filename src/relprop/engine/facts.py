"""What is known about a tensor while explaining, in one place.

Facts live as attributes on the tensors themselves (they must follow a tensor wherever the model passes it), under
the names below and nowhere else; a fact stamped with the run's token holds only in that run.

  flow         computed from the explained input (``intercept.DataFlow`` sets and reads it)
  call         the rule op call whose output this is (``ops.kept.KeptOutput``): in-place writes preserve values for it
  producer     the linear-like op call that made it (batch-norm merging reads it)
  softmax      the tensor a softmax output came from (the logits policy at the output reads it)
  gate         a sigmoid-like output: in a product it is a gate, not a signal
  nonnegative  known to be >= 0 (after a ReLU): rules drop their x- terms there
  batch        (token, axis, origin): where the batch's samples lie, and which sample each row there comes from
               (``engine.batch``)
"""
from __future__ import annotations

FLOW, CALL, PRODUCER = "_relprop", "_relprop_call", "_relprop_producer"
SOFTMAX, GATE, NONNEGATIVE = "_relprop_softmax", "_relprop_gate", "_relprop_nonnegative"
BATCH = "_relprop_batch"
_CARRIED = (FLOW, PRODUCER, SOFTMAX, GATE, BATCH)  # what an identity op (the report's tap) hands on to its output


class Facts:
    """Reads and writes the facts of one run (its token)."""

    def __init__(self, token):
        self.token = token

    def carry(self, source, target):
        """target stands for source (an identity in between): it gets the same facts."""
        for name in _CARRIED:
            if hasattr(source, name):
                setattr(target, name, getattr(source, name))

    @staticmethod
    def call(tensor):
        return getattr(tensor, CALL, None)

    @staticmethod
    def set_call(tensor, call):
        setattr(tensor, CALL, call)

    @staticmethod
    def producer(tensor):
        return getattr(tensor, PRODUCER, None)

    @staticmethod
    def set_producer(tensor, producer):
        setattr(tensor, PRODUCER, producer)

    @staticmethod
    def batch(tensor):
        return getattr(tensor, BATCH, None)

    @staticmethod
    def set_batch(tensor, fact):
        setattr(tensor, BATCH, fact)

    @staticmethod
    def softmax_source(tensor):
        return getattr(tensor, SOFTMAX, None)

    @staticmethod
    def set_softmax_source(tensor, source):
        setattr(tensor, SOFTMAX, source)

    def is_gate(self, tensor) -> bool:
        return getattr(tensor, GATE, None) is self.token

    def set_gate(self, tensor):
        setattr(tensor, GATE, self.token)

    def is_nonnegative(self, tensor) -> bool:
        return getattr(tensor, NONNEGATIVE, None) is self.token

    def set_nonnegative(self, tensor, known: bool):
        if known:
            setattr(tensor, NONNEGATIVE, self.token)
        elif getattr(tensor, NONNEGATIVE, None) is not None:
            delattr(tensor, NONNEGATIVE)  # written in place by an op that may make it negative


# Ops after which a tensor is known >= 0, and ops that keep that fact when all their inputs have it.
MAKES_NONNEGATIVE = {"relu", "relu_", "abs"}
KEEPS_SIGN = {"max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
             "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
             "adaptive_avg_pool2d", "adaptive_avg_pool3d", "view", "reshape", "flatten", "cat", "concat", "dropout",
             "contiguous", "clone", "__getitem__", "permute", "transpose", "squeeze", "unsqueeze", "mean", "sum",
             "__add__", "add", "add_", "__iadd__", "__radd__", "max", "amax"}
