"""The engine: intercept every torch op while a model runs and route it through its op family's relevance rule.

Scoped, nothing global: a TorchFunctionMode sees each torch function call made inside ``Session.run`` (the ones
inside ``nn.Conv2d`` as well as ``x + y`` written in ``forward``); module hooks keep the stack of running modules so
that an op knows which module it belongs to. The backward pass then carries g with relevance = tensor * g.

  intercept.py          which tensors carry relevance, OpMode (the TorchFunctionMode base every mode shares:
                        name resolution, quiet ops, in-place calls), where warnings point
  session.py            one LRP run: module stack, dispatch to the family handlers of ``ops.table.HANDLERS``,
                        OpContext
  deeplift_session.py   one DeepLift pass over [inputs; references], dispatch to the families' DeepLift handlers
  report.py             report rows, taps and records
  facts.py              what is known about a tensor (gate, non-negative, the rule call that made it), in one place
  batch.py              the batch axis followed op by op, to warn when samples mix
  steps.py              recurrent layers as their time steps, for plain gradients (no cuDNN backward)
  incremental.py        forward passes that recompute only what a changed patch reaches
  together.py           several steps of a chain in one incremental pass, each op computing all their boxes

A new op family is one file in ``relprop/ops`` (see ``ops/table.py``); nothing here changes. The engine imports ops;
ops import nothing from the engine (what an op is, by name and arguments, is ``ops/signatures.py``).
"""
from ..ops.signatures import classify, out_of_place, plain_variant
from .intercept import DataFlow, Interceptor, OpMode, UnsupportedOperation, UnsupportedOpWarning, caller_level
from .report import Row
from .session import OpContext, Session

__all__ = ["DataFlow", "Interceptor", "OpContext", "OpMode", "Row", "Session", "UnsupportedOperation",
           "UnsupportedOpWarning", "caller_level", "classify", "out_of_place", "plain_variant"]
