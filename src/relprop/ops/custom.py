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
    """Give a custom autograd Function a relevance rule.

    Args:
        function: The torch.autograd.Function subclass.
        rule: "pass" (relevance passes through, for element-wise functions), "gradient" (gradient x input, for
            linear ones), a surrogate callable f(*inputs) whose gradient gives the rule, or None to forget the rule
            registered before.

    Raises:
        TypeError: for a function that is not an autograd Function subclass.
        ValueError: for another rule.
    """
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


def functions_in_graph(tensor: torch.Tensor) -> list[type]:
    """The custom Function classes in tensor's autograd graph (relprop's own left out), in the order first met."""
    found, seen, stack = {}, set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, BackwardCFunction):
            function = getattr(node, "_forward_cls", None)
            if function is not None and not function.__module__.startswith("relprop."):
                found.setdefault(function, None)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found)


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


_ACCUMULATE_GRAD = type(torch.ones(1, requires_grad=True).expand(1).grad_fn.next_functions[0][0])


class Adopter:
    """Finds custom Function outputs on the data flow and puts the tensor that stands for each in their place."""

    def __init__(self, busy):
        self.busy = busy  # a context manager: the session's own tensor work, not intercepted
        self.without_grad: dict = {}  # (grad_fn, output_nr) -> flow tensor read with grad off (a custom forward)
        self.adopted: dict = {}  # (grad_fn, output_nr) of a custom Function's output -> the tensor standing for it

    def seen_without_grad(self, tensors):
        for tensor in tensors:
            self.without_grad[(tensor.grad_fn, tensor.output_nr)] = tensor

    def clear(self):
        self.without_grad.clear()

    def adopt_all(self, ctx, value, direct_leaf):
        """value (a tensor, or a tuple, list or dict of them) with custom Function outputs adopted."""
        if isinstance(value, torch.Tensor):
            if value.requires_grad and not ctx.active(value) and function_of(value) is not None:
                return self.adopt(ctx, value, direct_leaf)
            return value
        if isinstance(value, (tuple, list)):
            adopted = [self.adopt_all(ctx, item, direct_leaf) for item in value]
            if any(new is not old for new, old in zip(adopted, value)):
                return tuple(adopted) if type(value) is tuple else type(value)(adopted)
        elif isinstance(value, dict) and value:
            adopted = {key: self.adopt_all(ctx, item, direct_leaf) for key, item in value.items()}
            if any(adopted[key] is not item for key, item in value.items()):
                return adopted
        return value

    def flow_tensor(self, ctx, node, output_nr):
        if isinstance(node, _ACCUMULATE_GRAD):
            return node.variable if ctx.active(node.variable) else None
        return self.without_grad.get((node, output_nr))

    def adopt(self, ctx, tensor, direct_leaf):
        key = (tensor.grad_fn, tensor.output_nr)
        if key in self.adopted:
            return self.adopted[key]
        node, function = tensor.grad_fn, function_of(tensor)
        if not reaches(node, lambda n, nr: self.flow_tensor(ctx, n, nr) is not None or (
                isinstance(n, _ACCUMULATE_GRAD) and n.variable is direct_leaf)):
            self.adopted[key] = tensor  # computed from parameters or constants only: no relevance to carry
            return tensor
        with self.busy():
            inputs = [(position, self.flow_tensor(ctx, *item)) for position, item in enumerate(node.next_functions)
                      if item[0] is not None]
            inputs = [(position, found) for position, found in inputs if found is not None]
            name, rule = name_of(function), rule_for(function)
            if rule is None:
                ctx.unsupported(name, f"no relevance rule is registered for it; register one with "
                                      f"relprop.register_function({function.__name__}, \"pass\" | \"gradient\" | "
                                      "surrogate)")
                rule, label = "gradient", "Gradient (unsupported)"
            else:
                label = ("Surrogate gradient" if callable(rule) else rule.capitalize()) + " (registered)"
            row = ctx.row(name, label)
            if rule == "gradient":
                out = tensor
                if row is not None:
                    node.register_hook(_relevance_into(row, inputs))
            else:
                out = apply_rule(rule, tensor, [ctx.tap(found, row) for _, found in inputs])
            ctx.mark(out)
            ctx.watch(out, row)
        self.adopted[key] = out
        return out


def _relevance_into(row, inputs):
    """A node hook adding the relevance reaching the inputs of a custom Function (kept as it is) to its row."""

    def hook(grad_inputs, grad_outputs):
        for position, tensor in inputs:
            if grad_inputs[position] is not None:
                row.relevance_in += float((tensor.detach() * grad_inputs[position]).sum())
        row.backward_seen = True

    return hook
