"""Custom ``torch.autograd.Function``s on the data flow: found, reported, and ruled where the user registered a rule.

torch runs a custom Function's ``apply`` without the torch-function hook, so the engine cannot route it like other
ops; it finds such a Function afterwards, from its output: a tensor reaching an intercepted op, a module's output or
the model's output whose ``grad_fn`` is a custom Function's backward node and whose graph leads back to the input
being explained. Unless a rule is registered, the Function's own backward is kept (gradient x input, exact only for
linear maps: x * x would double its relevance) and it is reported as unsupported.

Rules (``relprop.register_function(MyFunction, rule)``):
  "gradient"  keep the Function's backward: right for linear or homogeneous maps (2 x, a custom matmul)
  "pass"      element-wise: relevance passes through unchanged, R_in = R_out (g_in = g_out * y / x); one input
              carrying relevance, shaped like the output
  callable    a surrogate f(*inputs) whose gradient replaces the Function's backward, the value staying the
              Function's own: y + f(x) - f(x).detach(); e.g. ``lambda x: x * x.detach()`` passes x * x through
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.autograd.function import BackwardCFunction

from .elementwise import pass_through

RULES = ("pass", "gradient")
_REGISTRY: dict[type, object] = {}


def register_function(function: type, rule: str | Callable | None):
    """Give a custom autograd Function a relevance rule: "pass", "gradient", a surrogate callable, or None to forget
    the rule registered before."""
    if not (isinstance(function, type) and issubclass(function, torch.autograd.Function)):
        raise TypeError(f"register_function needs a torch.autograd.Function subclass, got {function!r}")
    if rule is None:
        _REGISTRY.pop(function, None)
        return
    if not callable(rule) and rule not in RULES:
        raise ValueError(f"rule for {function.__name__} must be 'pass', 'gradient' or a callable surrogate "
                         f"f(*inputs) whose gradient gives the rule; got {rule!r}")
    _REGISTRY[function] = rule


def rule_for(function: type):
    """The registered rule of a Function class, None if there is none."""
    return _REGISTRY.get(function)


def function_of(tensor: torch.Tensor) -> type | None:
    """The custom Function class that computed tensor, None if another op did (relprop's own Functions included)."""
    node = tensor.grad_fn
    if not isinstance(node, BackwardCFunction):
        return None
    function = getattr(node, "_forward_cls", None)
    if function is None or function.__module__.startswith("relprop."):
        return None
    return function


def name_of(function: type) -> str:
    return f"{function.__name__} (custom autograd Function)"


def reaches(node, is_flow_node) -> bool:
    """Whether the autograd graph below node reaches a node of the data flow (is_flow_node(node, output_nr))."""
    seen, stack = set(), [next_node for next_node in node.next_functions]
    while stack:
        item = stack.pop()
        if item[0] is None or item in seen:
            continue
        seen.add(item)
        if is_flow_node(*item):
            return True
        stack.extend(item[0].next_functions)
    return False


def apply_rule(rule, output: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """output with its backward replaced by the rule's ("gradient" keeps it); inputs carry relevance."""
    if rule == "gradient":
        return output
    value = output.detach()
    if rule == "pass":
        if len(inputs) != 1 or inputs[0].shape != output.shape:
            raise ValueError(f"the 'pass' rule needs one input carrying relevance, shaped like the output "
                             f"{tuple(output.shape)}; got {[tuple(t.shape) for t in inputs]}: register a surrogate "
                             "callable instead")
        return pass_through(inputs[0], lambda _: value)
    surrogate = rule(*inputs)
    if not isinstance(surrogate, torch.Tensor) or surrogate.shape != output.shape:
        raise ValueError(f"a surrogate for a custom Function must return a tensor shaped like its output "
                         f"{tuple(output.shape)}; got {getattr(surrogate, 'shape', type(surrogate).__name__)}")
    return surrogate + (value - surrogate.detach())
