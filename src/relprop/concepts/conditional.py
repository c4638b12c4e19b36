"""Conditional relevance (CRP): the part of an explanation that flows through chosen channels of chosen layers.

A condition maps layer names to channels, and optionally ``"y"`` to the explained class: ``{"features.28": [12, 40],
"y": 3}``. With g the LRP backward signal (relevance = value * g), the conditional backward starts at the output as
usual and, at each named layer L (top to bottom), multiplies g_L by a channel mask m_L (1 on the chosen channels, 0
elsewhere, or given weights), so that R_L = a_L * g_L * m_L is all that continues down. Below L only the path through
L is followed, so the input heatmap is exactly the relevance that passes through the chosen channels; the heatmaps
of all channels of a layer that every path crosses add up to the plain explanation.

One forward pass serves every condition: the backward of the relevance rules is linear in g (their denominators
depend on the forward pass alone), so all conditions go down as one batched backward (``torch.autograd.grad`` with
``is_grads_batched``), the part above the first named layer once per distinct target.
"""
from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass

import torch

from .. import diagnose
from ..engine import Session
from ..engine.report import Recorded
from ..attribution.lrp import LRP, _buffers_if_training, _logits_policy, _restore_buffers
from ..attribution.targets import check_input, output_gradient

TARGET = "y"
INPUT = ":input"


class Held(Recorded):
    """Keeps a recorded module output itself (no hook): the conditional backward asks for g there."""

    def watch(self, tensor: torch.Tensor):
        self.tensor = tensor


@dataclass
class Conditional:
    """The heatmaps of conditions, as conditional() returns them.

    Attributes:
        relevance: (condition, sample, *input shape) heatmaps.
        conditions: The conditions, as given.
        explained: (condition, sample) the relevance let through at each condition's lowest masked layer (at the
            output for a target alone).
        delta: Explained minus the heatmap's sum (what biases and stabilisers absorbed below it).
    """

    relevance: torch.Tensor
    conditions: list
    explained: torch.Tensor
    delta: torch.Tensor


def conditional(lrp: LRP, x: torch.Tensor, target=None, conditions=(), *, batch: int = 64) -> Conditional:
    """One heatmap per condition for x, from one forward pass and a batched backward (``batch`` conditions at once).

    Args:
        lrp: The LRP explainer (relprop.LRP) of the model; its composite gives the rules.
        x: The input batch.
        target: The class explained, as LRP takes it (None: the predicted class).
        conditions: A condition (a dict of layer name -> channels: an int, a list of ints or a 1-d float tensor of
            weights; optionally "y" -> class; "layer:input" names a layer's first input) or a list of them.
        batch: Conditions per backward pass.

    Returns:
        A Conditional.

    Raises:
        TypeError: when lrp is not an LRP explainer or a condition not a dict.
        ValueError: for no conditions, an unknown layer, channels out of range, or layers that do not run once on
            one path.

    Example:
        >>> import torch
        >>> import relprop
        >>> from relprop import concepts
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> lrp = relprop.LRP(model, "epsilon")
        >>> result = concepts.conditional(lrp, torch.rand(3, 4), target=0, conditions=[{"0": [0, 1]}, {"0": [2]}])
        >>> result.relevance.shape  # (condition, sample, *input shape)
        torch.Size([2, 3, 4])
    """
    if not isinstance(lrp, LRP):
        raise TypeError(f"conditional takes an LRP attributor, e.g. relprop.LRP(model), got {type(lrp).__name__}")
    if isinstance(conditions, dict):
        conditions = [conditions]
    conditions = list(conditions)
    if not conditions:
        raise ValueError("conditions is empty; give a dict such as {'features.28': [12]} or a list of them")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int (conditions per backward pass), got {batch!r}")
    parsed = [parse(condition, lrp.model, target) for condition in conditions]
    layers = list(dict.fromkeys(name for condition in parsed for name, _ in condition[1]))
    run = Run(lrp, x, layers)
    groups: dict[tuple, list[int]] = {}  # conditions on the same layers share each step of the backward
    results: dict[int, tuple] = {}
    try:
        for index, condition in enumerate(parsed):
            groups.setdefault(run.order(condition[1]), []).append(index)
        for path, members in groups.items():
            for start in range(0, len(members), batch):
                chunk = members[start:start + batch]
                heatmaps, totals = run.backward([parsed[i] for i in chunk], path)
                for position, index in enumerate(chunk):
                    results[index] = heatmaps[position], totals[position]
    finally:
        run.close()
    relevance = torch.stack([results[i][0] for i in range(len(parsed))])
    explained = torch.stack([results[i][1] for i in range(len(parsed))])
    delta = explained - relevance.reshape(relevance.shape[:2] + (-1,)).sum(-1)
    return Conditional(relevance, conditions, explained, delta)


def parse(condition, model, target):
    """A condition as (target, ((layer, channel weights or indices), ...)), names and indices checked."""
    if not isinstance(condition, dict):
        raise TypeError(f"a condition is a dict of layer name -> channels (and optionally 'y' -> class), got "
                        f"{type(condition).__name__}: {condition!r}")
    known = dict(model.named_modules())
    selected = []
    for name, channels in condition.items():
        if name == TARGET:
            continue
        check_layer(known, name)
        selected.append((name, channel_selection(name, channels)))
    return condition.get(TARGET, target), tuple(selected)


def check_layer(modules: dict, name) -> None:
    """Refuse a layer name the model does not have, suggesting the closest ones."""
    if not isinstance(name, str) or module_name(name) not in modules:
        close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"the model has no module named {name!r}{hint}")


def module_name(name: str) -> str:
    """The module a condition names: "layer" (its output) or "layer:input" (its first input, e.g. the attention
    heads' concatenated outputs entering an output projection)."""
    return name[:-len(INPUT)] if name.endswith(INPUT) else name


def heads(indices, head_dim: int) -> list[int]:
    """The channels of attention heads in their concatenated output (what an output projection's input holds).

    Args:
        indices: A head index or a list of them.
        head_dim: Channels per head.

    Returns:
        The channel indices.

    Example:
        >>> from relprop.concepts import heads
        >>> heads([0, 2], head_dim=2)
        [0, 1, 4, 5]
    """
    indices = [indices] if isinstance(indices, numbers.Integral) else list(indices)
    return [head * head_dim + offset for head in indices for offset in range(head_dim)]


def channel_selection(name, channels):
    """Channel indices as a long tensor, or per-channel weights as a float tensor (a mask or a re-weighting)."""
    if isinstance(channels, numbers.Integral) and not isinstance(channels, bool):
        return torch.tensor([int(channels)])
    if isinstance(channels, range):
        channels = list(channels)
    tensor = torch.as_tensor(channels)
    if tensor.dim() != 1 or tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"layer {name!r}: channels must be an int, a list of ints or a 1-d float tensor of channel "
                        f"weights, got {channels!r}")
    if len(tensor) == 0:
        raise ValueError(f"layer {name!r}: the channel list is empty; name at least one channel")
    if not tensor.is_floating_point():
        tensor = tensor.long()
    return tensor


def channel_dim(module, tensor) -> int:
    """Where a layer's output keeps its channels: dim 1 (images, dense features), the last dim for token sequences."""
    conv_like = (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.pooling.
                 _MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd)
    if tensor.dim() == 3 and not isinstance(module, conv_like):
        return 2
    return 1


def channel_mask(name, selection, tensor, dim) -> torch.Tensor:
    """The mask over a layer's output that keeps (or weights) the selected channels, broadcastable to the output."""
    count = tensor.shape[dim]
    shape = [1] * tensor.dim()
    shape[dim] = count
    if selection.is_floating_point():
        if len(selection) != count:
            raise ValueError(f"layer {name!r}: {len(selection)} channel weights for a layer of {count} channels")
        return selection.to(device=tensor.device, dtype=tensor.dtype).reshape(shape)
    bad = selection[(selection < -count) | (selection >= count)]
    if len(bad):
        raise ValueError(f"layer {name!r}: channels {bad.tolist()} out of range; its output {tuple(tensor.shape)} "
                         f"has {count} channels (0..{count - 1}) along dim {dim}")
    mask = torch.zeros(count, dtype=tensor.dtype, device=tensor.device)
    mask[selection] = 1
    return mask.reshape(shape)


def target_key(target):
    """Conditions with equal targets share the backward above their layers: tensors by identity (their repr elides
    large ones), anything else by value."""
    return ("tensor", id(target)) if isinstance(target, torch.Tensor) else repr(target)


def _input_keeper(inputs: dict, name: str):
    def keep(module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            inputs.setdefault(name, []).append(args[0])
    return keep


class Run:
    """One forward pass of x under the LRP engine, holding the named layers' outputs for conditional backwards."""

    def __init__(self, lrp: LRP, x: torch.Tensor, layers):
        check_input(lrp.model, x)
        self.lrp, self.batch = lrp, len(x)
        self.modules = dict(lrp.model.named_modules())
        outputs = [name for name in layers if not name.endswith(INPUT)]
        session = Session(lrp.model, lrp.composite, lrp.canonizers, lrp.strict, outputs, False, lrp._warned,
                          differentiable=True, elementwise=lrp.elementwise, forward=lrp.forward)
        session.record_as = Held  # differentiable rules: their backward runs batched (out-of-place ops only)
        inputs: dict[str, list] = {}
        handles = [self.modules[module_name(name)].register_forward_pre_hook(_input_keeper(inputs, name))
                   for name in layers if name.endswith(INPUT)]
        self.snapshot = _buffers_if_training(lrp.model)
        try:
            try:
                output = session.run(x)
            except RuntimeError as error:
                raise diagnose.forward_failure(lrp.model, x, error) from error
            finally:
                for handle in handles:
                    handle.remove()
            output = lrp._select_output(output)
            diagnose.check_output_batch(output, len(x))
        except BaseException:
            self.close()
            raise
        self.session, self.output = session, _logits_policy(output)[0]
        self.held = {name: [record.tensor for record in records] for name, records in session.recorded.items()}
        self.held.update({name: tensors for name, tensors in inputs.items() if tensors})
        self.starts: dict = {}

    def close(self):
        _restore_buffers(self.lrp.model, self.snapshot)
        self.snapshot = None

    def order(self, selected) -> tuple:
        """The condition's layers from the top of the network down (by when autograd made their tensors)."""
        for name, _ in selected:
            if name not in self.held:
                ran = difflib.get_close_matches(name, list(self.held), n=3)
                hint = f" (layers that ran and are named: {', '.join(map(repr, ran))})" if ran else ""
                raise ValueError(f"layer {name!r} did not run (or its output carries no relevance) for this input, so "
                                 f"no relevance passes through it; condition on a layer of the forward pass{hint}")
            if len(self.held[name]) > 1:
                raise ValueError(f"layer {name!r} ran {len(self.held[name])} times in one forward pass; "
                                 "condition on a module that runs once (e.g. one of its inner layers)")
        names = list(dict.fromkeys(name for name, _ in selected))
        return tuple(sorted(names, key=lambda name: -self.tensor(name).grad_fn._sequence_nr()))

    def tensor(self, name):
        return self.held[name][0]

    def module(self, name):
        return self.modules[module_name(name)]

    def start(self, target):
        """g at the output for a target (the class indices it names are checked there)."""
        key = target_key(target)
        if key not in self.starts:
            self.starts[key] = output_gradient(self.output.detach(), target)[0]
        return self.starts[key]

    def backward(self, conditions, path):
        """Heatmaps and let-through relevance (condition, sample) for conditions sharing one path of layers."""
        above, g, explained = self.through(conditions, path)
        return self.input_relevance(above, g, batched=True), explained

    def layer_relevance(self, conditions, path, name):
        """Relevance at the output of layer name (condition, *its shape) for conditions on layers above it, and the
        relevance let through (condition, sample)."""
        above, g, explained = self.through(conditions, path)
        tensor = self.tensor(name)
        return tensor.detach() * self._down(above, tensor, g, name), explained

    def through(self, conditions, path):
        """(the lowest named layer's output, masked g there with the conditions' dim first, let-through relevance)."""
        targets = list(dict.fromkeys(target_key(target) for target, _ in conditions))
        firsts = {}
        for target, _ in conditions:
            firsts.setdefault(target_key(target), self.start(target))
        g = torch.stack([firsts[key] for key in targets])
        above = self.output
        explained = (self.output.detach() * g).reshape(len(targets), self.batch, -1).sum(-1)
        if path:  # the part above the first named layer: once per distinct target
            g = self._down(above, self.tensor(path[0]), g, path[0])
            above = self.tensor(path[0])
        index = torch.tensor([targets.index(target_key(target)) for target, _ in conditions], device=g.device)
        g, explained = g[index], explained[index]
        for position, name in enumerate(path):
            tensor = self.tensor(name)
            if position:
                g = self._down(above, tensor, g, name)
                above = tensor
            dim = channel_dim(self.module(name), tensor) + 1  # +1: the conditions' own dim comes first
            masks = torch.stack([channel_mask(name, dict(selected)[name], tensor, dim - 1) for _, selected in
                                 conditions])
            g = g * masks
            explained = (tensor.detach() * g).reshape(len(conditions), self.batch, -1).sum(-1)
        return above, g, explained

    def input_relevance(self, tensor, g, batched: bool) -> torch.Tensor:
        """Relevance at the input from g at tensor (g with the conditions' dim first when batched)."""
        leaves = [self.session.input_leaf, self.session.direct_leaf]
        grads = torch.autograd.grad(tensor, leaves, g, retain_graph=True, allow_unused=True, is_grads_batched=batched)
        relevance = torch.zeros(g.shape[:1] * batched + tuple(leaves[0].shape), dtype=leaves[0].dtype,
                                device=leaves[0].device)
        if grads[0] is not None:
            relevance = relevance + leaves[0].detach() * grads[0]
        if grads[1] is not None:
            relevance = relevance + grads[1]
        return relevance

    def _down(self, above, tensor, g, name):
        (g_below,) = torch.autograd.grad(above, tensor, g, retain_graph=True, allow_unused=True, is_grads_batched=True)
        if g_below is None:
            raise ValueError(f"layer {name!r} does not feed the layers above it in this condition (they lie on "
                             "separate branches); a condition's layers must lie on one path from input to output")
        return g_below
