"""One DeepLift pass: the model run once on the batch [inputs; references] under interception, each op that touches
the input routed to its family's DeepLift handler (``ops.table``), which carries multipliers in its backward.

DeepLift explains the difference to a reference, f(x) - f(x0), as a sum of contributions (x - x0) * m, where the
multiplier m of an input is the chain rule run with each op's local multiplier (f(x) - f(x0)) / (x - x0) in place of
its derivative (the Rescale rule for element-wise ops; the gradient for linear ops; a path-averaged Jacobian, made
exact, for other nonlinear ops: ``ops/reference.py``). Inputs and references run in one batch so every op sees both;
``ops.reference.Pairing`` says which rows pair up. ``DeepLiftSession`` is the handlers' narrow context: ``pairing``,
``eps``, ``active``, ``fallback``, ``warn``, ``intercept`` and ``remember_softmax`` (see ``ops/reference.py``). The
method, its parameters and checks are ``relprop.attribution.deeplift``; this module is the dispatch, as
``session.py`` is LRP's.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from ..ops import custom, load_families
from ..ops.reference import Pairing, path_averaged
from ..ops.table import deeplift_handler
from .intercept import DataFlow, Interceptor, UnsupportedOpWarning, caller_level

load_families()


class DeepLiftSession:
    """State of one DeepLift pass: which tensors come from the input, which rows pair up, the softmax outputs seen.

    Args:
        pairing: How the pass's batch [inputs; references] pairs up.
        eps: Below this |x - x0| an element-wise op uses its gradient.
        warned: Op names already warned about (shared across the passes of one explainer).
        explain_logits: Keep each softmax's input, so the logits under a softmax output can be explained.
    """

    def __init__(self, pairing: Pairing, eps: float, warned: set, explain_logits: bool = False):
        self.pairing, self.eps, self.warned = pairing, eps, warned
        self.softmax_inputs = {} if explain_logits else None  # id(softmax output) -> (output, its input)
        self.flow = DataFlow("_relprop_deeplift")
        self.mark, self.active = self.flow.mark, self.flow.active

    def run(self, forward: Callable, leaf: torch.Tensor, references: torch.Tensor):
        """forward([leaf; references]) under interception, with gradients on; custom autograd Functions found in
        its graph are warned about.

        Args:
            forward: Runs the model on a batch and returns the tensor to explain.
            leaf: The inputs (a leaf that requires grad: the multipliers are its gradient).
            references: The references, rows as the pairing says.

        Returns:
            The output for the whole batch.
        """
        batch = torch.cat([leaf, references])
        self.mark(batch)
        with torch.enable_grad(), Interceptor(self):
            output = forward(batch)
        self.check_custom_functions(output)
        return output

    def explained(self, output: torch.Tensor):
        """The tensor to explain and whether it is the logits: a softmax output's input when logits are explained.

        Args:
            output: The pass's output.

        Returns:
            A pair (tensor, logits explained).
        """
        softmax = self.softmax_inputs.get(id(output)) if self.softmax_inputs is not None else None
        if softmax is not None and softmax[0] is output and softmax[1].shape == output.shape:
            return softmax[1], True
        return output, False

    # ---- dispatch --------------------------------------------------------------------------------------------
    def handle(self, func, name, family, args, kwargs):
        active = self.flow.touched(args, kwargs)
        if not active:
            return func(*args, **kwargs)
        handler = deeplift_handler(family)  # the table is an allow-list: unknown ops are averaged, with a warning
        if handler is None:
            self.warn(name, "DeepLift knows no rule for it; its Jacobian averaged along the path from baseline to "
                            "input is used (exact in sum, but check that the op acts on each sample alone)")
            handler = path_averaged
        out = handler(self, func, name, args, kwargs, active)
        self.mark(out)
        return out

    # ---- what the handlers use -------------------------------------------------------------------------------
    def intercept(self):
        """Interception on again inside a handler: a decomposition's ops get their own multipliers."""
        return Interceptor(self)

    def remember_softmax(self, out, logits):
        if self.softmax_inputs is not None:
            self.softmax_inputs[id(out)] = (out, logits)

    def fallback(self, func, name, args, kwargs, why):
        out = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
               for t in (out if isinstance(out, (tuple, list)) else (out,))):
            self.warn(name, f"it is nonlinear and {why}; its gradient is used there, so the attributions may not add "
                            "up to the output difference (see Explanation.delta)")
        return out

    def warn(self, name, why):
        if name not in self.warned:
            self.warned.add(name)
            warnings.warn(f"relprop DeepLift: {name}: {why}", UnsupportedOpWarning, stacklevel=caller_level())

    def check_custom_functions(self, output: torch.Tensor):
        """Custom autograd Functions never reach the interceptor: find them in the graph, and warn unless the user
        registered them as linear ("gradient"), for which their own backward is exact."""
        for function in custom.functions_in_graph(output):
            if custom.rule_for(function) != "gradient":
                self.warn(custom.name_of(function), "DeepLift cannot see inside it; its own backward is used, so the "
                                                    "attributions may not add up to the output difference (see "
                                                    "Explanation.delta). If it is linear, say so with "
                                                    f"relprop.register_function({function.__name__}, \"gradient\")")
