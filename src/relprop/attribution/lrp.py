"""LRP attributor: validate, run the model under the engine, start relevance at the target, collect it at the input.

Relevance starts at the output as ``output * g`` (g from the target, ``targets.output_gradient``); the engine's
backward pass carries g with relevance = tensor * g, so at the input

    R = x * grad_x + grad_direct

where grad_x is what reaches the input and grad_direct what reaches its "direct" twin, a leaf that takes relevance
as it is (not times the input) from the ops that hand it over whole; ``delta`` = sum(output * g) - sum(R) per
sample is the conservation residual.

Softmax at the output: when the model's output comes straight from a softmax or log-softmax, relevance starts at
the logits (the softmax input), as the LRP literature does; ``Explanation.output`` is still the model's output and
``explained_logits`` says the policy applied. Targets then select logits.
"""
from __future__ import annotations

import difflib
import fnmatch
import warnings
from typing import Callable

import torch

from .. import canonizers as canonizers_module
from .. import composites as composites_module
from .. import diagnose
from ..engine import Session, UnsupportedOperation, caller_level
from ..engine.batch import BatchMixingWarning
from ..engine.facts import Facts
from ..ops.weights import WeightCache
from ..explanation import Explanation, Report
from ..stabilize import divide_or_zero
from .targets import check_input, check_target_type, output_gradient, tensor_output


class LRP:
    """Layer-wise Relevance Propagation for a model, with a composite choosing the rule of each layer.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        composite: A name from ``relprop.composites.names()``, a Composite, or "auto" (the default):
            epsilon_plus_flat when the first linear-like layer run is a convolution, epsilon when it is dense (see
            ``Explanation.composite``).
        canonizers: "auto" (batch norm merged into the layer before it), None, or a list (see relprop.canonizers).
        strict: Raise on ops without a rule instead of warning.
        record: Module names whose output relevance is kept in ``Explanation.layers``.
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        elementwise: Extra module types to explain as one element-wise op (relevance passes through), for
            activations or RMS norms written from ops without rules; *RMSNorm and *GELU/SiLU...Activation classes
            are recognised.
        class_names: Names of the output's classes, kept on each Explanation.
        **composite_params: The composite's parameters, e.g. epsilon=0.25.

    Raises:
        TypeError: for a model that is not an nn.Module, or arguments of the wrong type.
        ValueError: for an unknown composite or canonizer, or a recorded module the model does not have.

    Example:
        >>> import torch
        >>> import relprop
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> lrp = relprop.LRP(model, "epsilon")
        >>> explanation = lrp(torch.rand(2, 4), target=0)
        >>> explanation.relevance.shape
        torch.Size([2, 4])
    """

    # What memory.needed_bytes reads (as for relprop.attribution's methods): one pass of the inputs themselves,
    # whose graph also keeps the modified pre-activations (measured 1.4x a gradient's in the benchmarks)
    keeps_graph, copies_in_passes, saved_per_activation = True, False, 1.5

    def __init__(self, model: torch.nn.Module, composite="auto", canonizers="auto", strict: bool = False,
                 record=(), output: Callable | None = None, feature_names=None, forward: Callable | None = None,
                 elementwise=(), class_names=None, **composite_params):
        model = diagnose.model_to_explain(model)
        self.model = model
        self.composite = composites_module.get(composite, **composite_params)
        self.canonizers = canonizers_module.resolve(canonizers)
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be True or False, got {strict!r}")
        self.strict = strict
        self.record = _check_record(model, record)
        for name, value in (("output", output), ("forward", forward)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be a callable, got {type(value).__name__}")
        self.output = output
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        self.forward = forward
        self.elementwise = tuple(elementwise)
        self._warned: set = set()
        self._weights = WeightCache()  # modified weights kept between calls while the parameters are unchanged

    def copies_per_input(self, sample_shape: tuple) -> int:
        """How many model inputs explaining one sample takes: one.

        Args:
            sample_shape: One sample's shape (without the batch dimension).

        Returns:
            1.
        """
        return 1

    def __call__(self, x: torch.Tensor, target=None, *, create_graph: bool = False, record=None) -> Explanation:
        """Explain x: relevance of every input value for the target.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.
            create_graph: Keep the graph of the relevance, so it can be differentiated (e.g. to train on
                explanations).
            record: Module names whose output relevance is kept for this call (default: the explainer's).

        Returns:
            An Explanation: relevance shaped like x, the explained output, the conservation residual delta, and
            more.

        Raises:
            TypeError: for an x or target of the wrong type.
            ValueError: for an input or target that does not fit the model (the message names the fix).
        """
        explanation, _ = self._explain(x, target, create_graph=create_graph, record=record, report=False)
        return explanation

    def report(self, x: torch.Tensor, target=None) -> Report:
        """Explain x and list every op that ran: module, rule, relevance out of it and into its inputs.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.

        Returns:
            A Report (``.table()``, ``.leaks()``).
        """
        explanation, rows = self._explain(x, target, create_graph=False, record=None, report=True)
        return Report(rows, explanation)

    def _explain(self, x, target, create_graph, record, report):
        check_input(self.model, x)
        target = check_target_type(target)
        record = self.record if record is None else _check_record(self.model, record)
        session = Session(self.model, self.composite, self.canonizers, self.strict, record, report, self._warned,
                          differentiable=create_graph, elementwise=self.elementwise, forward=self.forward,
                          weights=self._weights)
        snapshot = _buffers_if_training(self.model)
        try:
            try:
                output = session.run(x)
            except (UnsupportedOperation, TypeError, ValueError):
                raise
            except RuntimeError as error:
                raise diagnose.forward_failure(self.model, x, error) from error
            output = self._select_output(output)
            diagnose.check_output_batch(output, len(x))
            explained_tensor, logits = _logits_policy(output)
            g, target_index = output_gradient(explained_tensor.detach(), target)
            relevance_out = explained_tensor.detach() * g
            leaves = [session.input_leaf, session.direct_leaf]
            grads = torch.autograd.grad(explained_tensor, leaves, g, allow_unused=True, create_graph=create_graph)
        except BaseException:
            _restore_buffers(self.model, snapshot)
            raise
        relevance = torch.zeros_like(session.input_leaf)
        if grads[0] is not None:
            relevance = relevance + session.input_leaf * grads[0]
        if grads[1] is not None:
            relevance = relevance + grads[1]
        if not create_graph:
            relevance = relevance.detach()
        explained = relevance_out.reshape(len(relevance), -1).sum(1)
        delta = explained - relevance.detach().reshape(len(relevance), -1).sum(1)
        layers = {}
        for name, records in session.recorded.items():
            values = [record.result() for record in records]
            layers[name] = values[0] if len(values) == 1 else values
        gradient = torch.zeros_like(session.input_leaf) if grads[0] is None else grads[0]
        if grads[1] is not None:
            gradient = gradient + divide_or_zero(grads[1], session.input_leaf.detach())
        if not create_graph:
            gradient = gradient.detach()
        self._warn_unmatched(session)
        explanation = Explanation(relevance, output.detach(), explained, delta, target_index, layers, logits,
                                  gradient, self.feature_names, composite=self.composite.summary(),
                                  class_names=self.class_names)
        if session.batch is not None and session.batch.mixing is not None:
            warnings.warn(_batch_mixing_message(session.batch.mixing), BatchMixingWarning, stacklevel=caller_level())
            explanation.details["batch_mixing"] = session.batch.mixing  # for programs: which op mixed, where
        return explanation, session.rows

    def _warn_unmatched(self, session):
        """name_map and index_map entries that no linear-like layer of this run matched: a warning, once each."""
        ran = [site.name for site in session.sites]
        composite = self.composite
        names, positions = getattr(composite, "given", (tuple(composite.name_map), tuple(composite.index_map)))
        unmatched = [f"name_map key {key!r}" + _closest(key, ran) for key in names
                     if key not in ran and not any(fnmatch.fnmatchcase(name, key) for name in ran)]
        count = session.linear_index
        layers = f"{count} linear-like layers, 0..{count - 1}" if count else "no linear-like layers"
        unmatched += [f"index_map key {key} (the model ran {layers})" for key in positions if not -1 < key < count]
        for entry in unmatched:
            if entry not in self._warned:
                self._warned.add(entry)
                warnings.warn(f"composite: {entry} matched no linear-like layer (linear, convolution, average "
                              "pooling), so its rule was never used", UserWarning, stacklevel=4)

    def _select_output(self, output):
        if self.output is not None:
            output = self.output(output)
        tensor_output(output)
        if not output.requires_grad:
            raise ValueError("the model's output does not depend on its input through differentiable ops (was it "
                             "computed under torch.no_grad() or detached?); relevance cannot flow back to the input")
        return output


def explain(model: torch.nn.Module, x: torch.Tensor, target=None, composite="auto", *,
            canonizers="auto", strict: bool = False, record=(), create_graph: bool = False, output=None,
            feature_names=None, forward=None, elementwise=(), class_names=None, **composite_params) -> Explanation:
    """One call: LRP(model, composite, ...)(x, target).

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        x: The input batch, samples first.
        target: What to explain: None (the predicted class; per location for outputs such as segmentation maps), a
            class int, one class int per sample, a bool mask or float tensor shaped like the output (the output
            relevance), or a callable(output) -> output relevance.
        composite: A name from ``relprop.composites.names()``, a Composite, or "auto" (the default):
            epsilon_plus_flat when the first linear-like layer run is a convolution, epsilon when it is dense (see
            ``Explanation.composite``).
        canonizers: "auto" (batch norm merged into the layer before it), None, or a list (see relprop.canonizers).
        strict: Raise on ops without a rule instead of warning.
        record: Module names whose output relevance is kept in ``Explanation.layers``.
        create_graph: Keep the graph of the relevance, so it can be differentiated.
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        elementwise: Extra module types to explain as one element-wise op (relevance passes through), for
            activations or RMS norms written from ops without rules; *RMSNorm and *GELU/SiLU...Activation classes
            are recognised.
        class_names: Names of the output's classes, kept on each Explanation.
        **composite_params: The composite's parameters, e.g. epsilon=0.25.

    Returns:
        An Explanation.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for an input or target that does not fit the model (the message names the fix).

    Example:
        >>> import torch
        >>> import relprop
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> explanation = relprop.explain(model, torch.rand(2, 4), target=1, composite="epsilon")
        >>> explanation.relevance.shape, explanation.target.tolist()
        (torch.Size([2, 4]), [1, 1])
    """
    attributor = LRP(model, composite, canonizers=canonizers, strict=strict, record=record, output=output,
                     feature_names=feature_names, forward=forward, elementwise=elementwise, class_names=class_names,
                     **composite_params)
    return attributor(x, target, create_graph=create_graph)


def _check_record(model, record):
    if isinstance(record, str):
        record = [record]
    record = tuple(record or ())
    known = dict(model.named_modules())
    for name in record:
        if not isinstance(name, str):
            hint = f"; did you mean {str(name)!r}?" if str(name) in known else ""
            raise TypeError(f"record takes qualified module names (str, as in model.named_modules()), got {name!r} "
                            f"({type(name).__name__}){hint}")
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"record: the model has no module named {name!r}{hint}")
    return record


def _batch_mixing_message(what: str) -> str:
    return (f"relprop: the samples of the batch exchange information in the forward ({what}), so each sample's "
            "output depends on the others: row i of the relevance is then sample i's share of every explained "
            "output in the batch, not an explanation of explained[i] alone, and delta[i] is no conservation check "
            "for sample i (delta.sum() is, for the batch). For one node of a graph use "
            "relprop.gnn.explain_graph(model, x, edge_index, node=i); otherwise explain each sample on its own "
            "(x[i:i + 1]), or the whole batch as one sample (x.unsqueeze(0) with a forward that removes that dim).")


def _closest(name: str, names) -> str:
    if any(n.startswith(name + ".") for n in names):
        return f" (names match a layer's own module only; for the layers inside {name!r} use {name + '.*'!r})"
    close = difflib.get_close_matches(name, [n for n in names if n], n=3)
    return f" (closest layers run: {', '.join(repr(c) for c in close)})" if close else ""


def _logits_policy(output):
    source = Facts.softmax_source(output)
    if source is not None and isinstance(source, torch.Tensor) and source.shape == output.shape:
        return source, True
    return output, False


def _buffers_if_training(model):
    if not any(module.training for module in model.modules()):
        return None
    return [(buffer, buffer.detach().clone()) for buffer in model.buffers()]


def _restore_buffers(model, snapshot):
    if snapshot is None:
        return
    with torch.no_grad():
        for buffer, saved in snapshot:
            buffer.copy_(saved)
