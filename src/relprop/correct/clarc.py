"""Class Artifact Compensation (ClArC, Anders et al., Information Fusion 2022) at inference: P-ClArC.

With v the CAV (unit length) and c the clean level v . mean(clean) in the CAV's space, P-ClArC moves every
activation h onto the hyperplane {v . h = c} along v:

    h' = h - (v . h - c) v

(with pooling "mean", v . h is read from the mean over positions and the shift is applied at every position). It
is a projection: applying it twice changes nothing, and the clean samples' mean, which lies on the hyperplane, stays
where it is. What the artifact added along v is gone, whatever the sample, with no retraining.

The correction is a forward hook at the CAV's layer: :func:`attach` puts it on a model until the returned handle is
removed; :func:`p_clarc` returns a corrected copy and leaves the given model untouched. Both consist of plain torch
ops (a dot product, a product with a constant, a subtraction), so LRP explains the corrected model as it is.
"""
from __future__ import annotations

import copy

import torch

from .cav import CAV, evaluating, layer_module


def move_to_level(activation: torch.Tensor, cav: CAV, level) -> torch.Tensor:
    """h - (v . h - level) v: the activation with its coordinate along the CAV set to level (per sample or one).

    Args:
        activation: The layer's activations (N, *shape).
        cav: The CAV (its layer names where it acts).
        level: The target coordinate: one number or one per sample.

    Returns:
        A tensor shaped like activation.
    """
    shift = cav.coordinate(activation) - torch.as_tensor(level, dtype=activation.dtype, device=activation.device)
    return activation - shift.reshape(-1, *([1] * (activation.dim() - 1))) * cav.spread(activation)


def project(activation: torch.Tensor, cav: CAV) -> torch.Tensor:
    """P-ClArC: the activation moved onto the clean samples' hyperplane along the CAV.

    Args:
        activation: The layer's activations (N, *shape).
        cav: The CAV (its layer names where it acts).

    Returns:
        A tensor shaped like activation.
    """
    return move_to_level(activation, cav, cav.clean_level)


class Projection:
    """The forward hook of P-ClArC: replaces the layer's output by its projection.

    Args:
        cav: The CAV.
    """

    def __init__(self, cav: CAV):
        self.cav = cav

    def __call__(self, module, inputs, output):
        """The forward hook itself.

        Args:
            module: The layer.
            inputs: Its inputs.
            output: Its output.

        Returns:
            The projected output.
        """
        return project(output, self.cav)


def attach(model: torch.nn.Module, cav: CAV):
    """Put P-ClArC on the model's layer in place; returns the handle whose ``remove()`` takes it off again.

    Args:
        model: The model.
        cav: The CAV (its layer names where it acts).

    Returns:
        A torch hook handle.

    Raises:
        ValueError: for a layer the model does not have.
    """
    return layer_module(model, cav.layer).register_forward_hook(Projection(cav))


def p_clarc(model: torch.nn.Module, cav: CAV) -> torch.nn.Module:
    """A copy of the model with P-ClArC at the CAV's layer; the given model is not changed.

    Args:
        model: The model.
        cav: The CAV (its layer names where it acts).

    Returns:
        The corrected copy.

    Raises:
        ValueError: for a layer the model does not have.

    Example:
        >>> import torch
        >>> from relprop import correct
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
        >>> cav = correct.from_activations(torch.eye(3)[:1].repeat(4, 1) + 0.1 * torch.rand(4, 3), torch.zeros(4, 3), layer="0")
        >>> corrected = correct.p_clarc(model, cav)
        >>> corrected(torch.rand(2, 3)).shape
        torch.Size([2, 2])
    """
    layer_module(model, cav.layer)
    corrected = copy.deepcopy(model)
    attach(corrected, cav)
    return corrected


class Shift:
    """A forward hook adding t_i * v to sample i's activation, with t a tensor the caller can differentiate by: the
    directional derivative of any output along the CAV (TCAV, RR-ClArC's penalty) is d output / d t.

    Args:
        cav: The CAV.
    """

    def __init__(self, cav: CAV):
        self.cav, self.amount = cav, None

    def __call__(self, module, inputs, output):
        """The forward hook itself.

        Args:
            module: The layer.
            inputs: Its inputs.
            output: Its output.

        Returns:
            The shifted output.
        """
        self.amount = torch.zeros(len(output), dtype=output.dtype, device=output.device, requires_grad=True)
        self.cav.check(output)
        return output + self.amount.reshape(-1, *([1] * (output.dim() - 1))) * self.cav.spread(output)


def directional_derivative(model: torch.nn.Module, x: torch.Tensor, cav: CAV, target,
                           create_graph: bool = False) -> torch.Tensor:
    """(N,): d logit_target / d t of each sample, with the layer's activation moved by t along the CAV before any
    hook already on the layer (a P-ClArC projection there makes it 0).

    Args:
        model: The model.
        x: The inputs.
        cav: The CAV (its layer names where it acts).
        target: The class whose logit is differentiated: an int or one per sample.
        create_graph: Keep the graph, so the derivative can be trained on (RR-ClArC).

    Returns:
        (N,) derivatives.

    Raises:
        ValueError: when the CAV's layer does not run.
    """
    shift = Shift(cav)
    handle = layer_module(model, cav.layer).register_forward_hook(shift, prepend=True)
    try:
        with torch.enable_grad(), evaluating(model):
            output = model(x)
            if shift.amount is None:
                raise ValueError(f"layer {cav.layer!r} did not run in the forward pass; pick a layer the model uses")
            target = torch.as_tensor(target, device=output.device).reshape(-1).expand(len(x))
            picked = output.gather(1, target[:, None]).sum()
            (gradient,) = torch.autograd.grad(picked, shift.amount, create_graph=create_graph)
    finally:
        handle.remove()
    return gradient


__all__ = ["project", "move_to_level", "Projection", "attach", "p_clarc", "Shift", "directional_derivative"]
