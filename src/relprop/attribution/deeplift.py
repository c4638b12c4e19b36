"""DeepLift with the Rescale rule (Shrikumar et al. 2017) and DeepLiftShap, by op interception: the method (its
parameters, checks and result); the pass itself is ``engine.deeplift_session``.

The model runs once on the batch [inputs; baselines] while a TorchFunctionMode watches every torch function, so
ops written in ``forward`` (``torch.relu``, ``F.gelu``, ``x * gate``), modules used more than once and in-place ops
are all seen. Each op that touches the input goes to its op family's DeepLift handler (``ops/table.py``; the
handler lives in the family's file), whose backward carries DeepLift multipliers instead of gradients:

  element-wise ops (activations, rectifiers, exp, pow, ...)   Rescale: (f(x) - f(x0)) / (x - x0)   ops/elementwise.py
  max-pooling                          each window's difference to the winning input of x or x0   ops/plain.py
  products of two activations          the gradient at the midpoint, exact for degree two         ops/products.py
  linear ops (convolutions, linear layers, sums, average pooling, batch norm in eval mode, reshapes, ...)
                                       the gradient, exact for them                 ops/linear.py, ops/plain.py
  every other nonlinear op (softmax, log-softmax, layer/group/RMS norm, division by an activation, max over a
  dimension, products of three or more activations; fused attention runs as its decomposition)
                                       the op's Jacobian averaged along the path from reference to input, made
                                       exact per sample                                           ops/reference.py
  an op of the input that no family claims
                                       the same path-averaged Jacobian, with a warning naming it (check ``delta``)
  a custom autograd Function           its own backward, with a warning (unless registered as "gradient": linear)

This is an allow-list: an op is taken as linear (its gradient) only where its family says so. ``explain_logits``
follows the DeepLift paper's advice for a softmax at the output: the logits before it are explained instead (the
result says so in ``explained_logits``).

Batch norm or dropout in training mode would treat inputs and baselines differently and raise an error. Each
distinct baseline runs once: a baseline shared by the batch (a number, one sample) adds a single row to the pass,
and baselines never need a gradient, so with many of them convolutions run them without one.

The parameters and semantics follow captum's ``DeepLift`` / ``DeepLiftShap`` so users can switch: ``baseline``
(captum's ``baselines``), ``multiply_by_inputs``, ``custom_attribution_func(multipliers[, inputs[, baselines]])``
(called with tensors here, not tuples), ``eps``. ``delta`` is ``explained - relevance.sum()`` with ``explained``
the target's output difference f(x) - f(baseline): captum's convergence delta with the opposite sign.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..engine.deeplift_session import DeepLiftSession
from ..explanation import Explanation
from ..ops.reference import Pairing
from .base import Attribution, baseline_like, batched, input_gradient, per_sample_sum, positional_count, rows_of
from .targets import output_gradient


class DeepLift(Attribution):
    """DeepLift with the Rescale rule: attributions add up to f(x) - f(baseline) for the target.

    ``gradient`` holds the multipliers.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        baseline: A number, one sample (shared by the batch) or one baseline per sample; can be overridden per call.
        multiply_by_inputs: Attributions are (x - baseline) * multipliers (global); False gives the multipliers
            alone.
        custom_attribution_func: f(multipliers), f(multipliers, inputs) or f(multipliers, inputs, baselines)
            returning the attributions (tensors shaped like x), replacing the default.
        eps: Below this |x - x0| an element-wise op uses its gradient.
        batch_size: The most model inputs in one pass (each input runs with its baseline, so a pass holds batch_size
            / 2 pairs).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
        explain_logits: When the output comes straight from a softmax or log-softmax, explain the logits before it
            (``explained_logits`` says so).

    Raises:
        TypeError: for a custom_attribution_func that is not callable or explain_logits that is not a bool.
        ValueError: for a custom_attribution_func that does not take 1 to 3 arguments.
    """

    def __init__(self, model, baseline=0.0, multiply_by_inputs: bool = True,
                 custom_attribution_func: Callable | None = None, eps: float = 1e-10, batch_size: int | None = None,
                 output=None, forward=None, feature_names=None, explain_logits: bool = False):
        super().__init__(model, batch_size, output, forward, feature_names)
        if not isinstance(explain_logits, bool):
            raise TypeError(f"explain_logits must be True or False, got {explain_logits!r}")
        self.explain_logits = explain_logits
        if custom_attribution_func is not None:
            if not callable(custom_attribution_func):
                raise TypeError("custom_attribution_func must be callable as f(multipliers), f(multipliers, inputs) "
                                "or f(multipliers, inputs, baselines)")
            if positional_count(custom_attribution_func) not in (1, 2, 3):
                raise ValueError("custom_attribution_func must take 1 to 3 arguments: (multipliers[, inputs[, "
                                 "baselines]])")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.baseline = baseline
        self.multiply_by_inputs = bool(multiply_by_inputs)
        self.custom_attribution_func = custom_attribution_func
        self.eps = float(eps)
        self._warned: set = set()

    def copies_per_input(self, sample_shape):
        """Each input runs beside its reference: counted as whole pairs at once (an upper bound, since a pass holds
        at most rows_per_pass rows).

        Args:
            sample_shape: One sample's shape (without the batch dimension).

        Returns:
            2 (an input and its reference).
        """
        return 2

    def __call__(self, x: torch.Tensor, target=None, *, baseline=None) -> Explanation:
        """Explain x against the baseline.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.
            baseline: Overrides the explainer's baseline for this call.

        Returns:
            An Explanation whose relevance sums to f(x) - f(baseline) per sample, up to delta.
        """
        target = self.check(x, target)
        x = x.detach()
        baseline = self.baseline if baseline is None else baseline
        reference = baseline_like(x, baseline)
        if _shared(x, baseline):  # one baseline for the whole batch: it runs once, not once per sample
            bank, which = reference[:1].contiguous(), torch.zeros(len(x), 1, dtype=torch.long, device=x.device)
        else:
            bank, which = reference, torch.arange(len(x), device=x.device).unsqueeze(1)
        explanation = self.attribute(x, target, bank, which)
        del explanation.details["delta_per_baseline"]  # one baseline: the same as delta
        return explanation

    def attribute(self, x: torch.Tensor, target, bank: torch.Tensor, which: torch.Tensor) -> Explanation:
        """Attributions of x against baselines bank[which[n, b]] for each sample n and each b, averaged over b.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.
            bank: The baselines (B, *sample).
            which: (N, b) indices into bank: the baselines of each sample.

        Returns:
            An Explanation.
        """
        samples, count = which.shape
        multipliers = x.new_empty((samples, count) + x.shape[1:])
        change = x.new_empty(samples, count)
        output, index, logits = None, None, False
        copies = ((x, which[:, b]) for b in range(count))
        pairs_per_pass = max(1, self.rows_per_pass(x) - 1 if len(bank) == 1 else self.rows_per_pass(x) // 2)
        for (inputs, chosen), sample, number in batched(copies, pairs_per_pass):
            used, pick = torch.unique(chosen, return_inverse=True)
            if len(used) == 1 or bool((pick == torch.arange(len(pick), device=pick.device)).all()):
                pick = None  # one shared reference broadcasts, aligned ones pair by position
            m, out, difference, classes, logits = self.multipliers(inputs, bank[used], pick, rows_of(target, sample))
            multipliers[sample, number] = m
            change[sample, number] = difference
            if output is None:
                output = out.new_empty((samples,) + out.shape[1:])
                index = None if classes is None else classes.new_empty(samples)
            output[sample] = out
            if index is not None:
                index[sample] = classes
        references = bank[which]
        inputs = x.unsqueeze(1).expand_as(references)
        attributions = self.combine(multipliers.flatten(0, 1), inputs.flatten(0, 1), references.flatten(0, 1))
        attributions = attributions.reshape(references.shape)
        # Per pair: f(x) - f(x0_b) - sum of its attributions; their mean over the baselines is explained - sum.
        pair_delta = change - attributions.flatten(2).sum(2)
        return Explanation(attributions.mean(1), output, change.mean(1), pair_delta.mean(1), index,
                           explained_logits=logits, gradient=multipliers.mean(1), feature_names=self.feature_names,
                           details={"delta_per_baseline": pair_delta})

    def combine(self, multipliers, inputs, baselines):
        """The attributions from multipliers: the custom function's, else (x - x0) * multipliers (or the multipliers
        alone).

        Args:
            multipliers: The multipliers, shaped like inputs.
            inputs: The inputs.
            baselines: Their baselines.

        Returns:
            A tensor shaped like inputs.
        """
        custom = self.custom_attribution_func
        if custom is None:
            return (inputs - baselines) * multipliers if self.multiply_by_inputs else multipliers
        attributions = custom(*(multipliers, inputs, baselines)[:positional_count(custom)])
        if isinstance(attributions, (tuple, list)) and len(attributions) == 1:
            attributions = attributions[0]
        if not isinstance(attributions, torch.Tensor) or attributions.shape != multipliers.shape:
            shape = getattr(attributions, "shape", type(attributions).__name__)
            raise ValueError(f"custom_attribution_func must return a tensor shaped like its multipliers "
                             f"{tuple(multipliers.shape)}, got {shape}")
        return attributions

    def multipliers(self, inputs, references, pick, target):
        """One pass over [inputs; references], input i paired with references[pick[i]] (pick None: aligned or
        one shared): (multipliers, output at inputs, f(x) - f(x0), class index or None, logits explained).

        Args:
            inputs: A batch of model inputs.
            references: The baselines.
            pick: The reference index of each input (None: aligned, or one shared).
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.

        Returns:
            A tuple (multipliers, output at inputs, f(x) - f(x0), class index or None, logits explained).
        """
        pairing = Pairing(len(inputs), len(references), pick)
        leaf = inputs.detach().requires_grad_(True)
        session = DeepLiftSession(pairing, self.eps, self._warned, self.explain_logits)
        output = session.run(self.run, leaf, references)
        if not pairing.fits(output):
            raise ValueError(f"the model's output has shape {tuple(output.shape)}, but DeepLift runs inputs and "
                             f"baselines as one batch of {pairing.total} and needs one output per sample along the "
                             "first dimension")
        explained, logits = session.explained(output)
        at_input, at_reference = explained[:pairing.rows], pairing.reference(explained)
        g, index = output_gradient(at_input.detach(), target)
        multipliers = input_gradient(at_input, leaf, g)
        change = per_sample_sum((at_input - at_reference).detach() * g)
        return multipliers, output[:pairing.rows].detach(), change, index, logits


def _shared(x: torch.Tensor, baseline) -> bool:
    """Whether a baseline is the same for every sample (a number, or a tensor without a per-sample dimension)."""
    if not isinstance(baseline, torch.Tensor):
        return True
    return baseline.dim() < x.dim() or baseline.shape[0] == 1


class DeepLiftShap(DeepLift):
    """DeepLift against each baseline of a distribution, averaged: an approximation of SHAP values.

    ``explained`` is f(x) minus the mean of f over the baselines; ``delta`` is per sample, ``explained -
    relevance.sum()`` as for every method, which is the mean of the pairs' residuals;
    ``details["delta_per_baseline"]`` (N, B) keeps the residual of each input x baseline pair (captum's convergence
    delta with the opposite sign).

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        baselines: A tensor of B >= 1 baseline samples (shape (B, *sample)), or a callable(x) returning one; can be
            overridden per call.
        multiply_by_inputs: Attributions are (x - baseline) * multipliers (global); False gives the multipliers
            alone.
        custom_attribution_func: f(multipliers), f(multipliers, inputs) or f(multipliers, inputs, baselines)
            returning the attributions (tensors shaped like x), replacing the default.
        eps: Below this |x - x0| an element-wise op uses its gradient.
        batch_size: The most model inputs in one pass (each input runs with its baseline, so a pass holds batch_size
            / 2 pairs).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
        explain_logits: When the output comes straight from a softmax or log-softmax, explain the logits before it
            (``explained_logits`` says so).

    Raises:
        TypeError: for a custom_attribution_func that is not callable or explain_logits that is not a bool.
        ValueError: for a custom_attribution_func that does not take 1 to 3 arguments.
    """

    def __init__(self, model, baselines, multiply_by_inputs: bool = True,
                 custom_attribution_func: Callable | None = None, eps: float = 1e-10, batch_size: int | None = None,
                 output=None, forward=None, feature_names=None, explain_logits: bool = False):
        super().__init__(model, 0.0, multiply_by_inputs, custom_attribution_func, eps, batch_size, output, forward,
                         feature_names, explain_logits)
        self.baselines = baselines

    def __call__(self, x: torch.Tensor, target=None, *, baselines=None) -> Explanation:
        """Explain x against each baseline, averaged.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.
            baselines: Overrides the explainer's baselines for this call.

        Returns:
            An Explanation.
        """
        target = self.check(x, target)
        x = x.detach()
        baselines = self.baselines if baselines is None else baselines
        if callable(baselines) and not isinstance(baselines, torch.Tensor):
            baselines = baselines(x)
        if not isinstance(baselines, torch.Tensor):
            raise TypeError(f"baselines must be a tensor of baseline samples or a callable(x) returning one, got "
                            f"{type(baselines).__name__}")
        if baselines.dim() != x.dim() or tuple(baselines.shape[1:]) != tuple(x.shape[1:]) or len(baselines) < 1:
            raise ValueError(f"baselines has shape {tuple(baselines.shape)}; give B >= 1 baseline samples shaped "
                             f"like x's samples: (B, {', '.join(str(s) for s in x.shape[1:])})")
        baselines = baselines.detach().to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(baselines).all()):
            raise ValueError("baselines contains NaN or infinite values")
        which = torch.arange(len(baselines), device=x.device).expand(len(x), len(baselines))
        return self.attribute(x, target, baselines, which)
