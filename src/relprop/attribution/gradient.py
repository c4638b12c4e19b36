"""Gradient-based attributions: plain and smoothed gradients, integrated gradients, modified ReLU backward passes.

All return a ``relprop.Explanation``. ``delta`` is ``explained - relevance.sum()`` where attributions are meant to add
up to the explained output (GradientXInput, IntegratedGradients, ExcitationBackprop, SmoothGrad with a composite)
and NaN where they are not (Gradient, SmoothGrad, GuidedBackprop, Deconvnet). ``gradient`` holds the (averaged,
possibly modified) gradient the attributions were made from.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..composites import Composite
from ..engine import OpMode, out_of_place
from ..explanation import Explanation
from ..ops.table import RECTIFIERS
from ..rules import ZPlus
from .base import (Attribution, Hybrid, baseline_like, batched, explained, input_gradient, per_sample_sum,
                   undefined)
from .lrp import LRP
from .targets import output_gradient


class Gradient(Attribution):
    """The gradient of the target output with respect to the input (saliency without the absolute value).

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.

    Example:
        >>> import torch
        >>> from relprop.attribution import Gradient
        >>> model = torch.nn.Linear(3, 2)
        >>> explanation = Gradient(model)(torch.rand(4, 3), target=1)
        >>> torch.equal(explanation.relevance, model.weight[1].detach().expand(4, 3))
        True
    """

    def __init__(self, model, output=None, forward=None, feature_names=None):
        super().__init__(model, None, output, forward, feature_names)

    def __call__(self, x: torch.Tensor, target=None) -> Explanation:
        """Explain x for the target.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.

        Returns:
            An Explanation (relevance shaped like x).

        Raises:
            TypeError: for an x or target of the wrong type.
            ValueError: for a target that does not fit the output.
        """
        target = self.check(x, target)
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad(), self.intercept():
            output = self.run(leaf)
        g, index = output_gradient(output.detach(), target)
        return self.explanation(x, input_gradient(output, leaf, g), output.detach(), g, index)

    def intercept(self):
        """The context the forward pass runs in (none for the plain gradient)."""
        return contextlib.nullcontext()

    def explanation(self, x, grad, output, g, index):
        """The Explanation made from one pass's gradient.

        Args:
            x: The input batch.
            grad: The gradient at x.
            output: The model's output.
            g: The output gradient.
            index: The explained class indices, or None.

        Returns:
            An Explanation.
        """
        return Explanation(grad, output, explained(output, g), undefined(x), index, gradient=grad,
                           feature_names=self.feature_names)


class GradientXInput(Gradient):
    """Input times gradient: exact LRP-0 for ReLU networks; ``delta`` is what the biases absorbed.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
    """

    def explanation(self, x, grad, output, g, index):
        relevance = x.detach() * grad
        total = explained(output, g)
        return Explanation(relevance, output, total, total - per_sample_sum(relevance), index, gradient=grad,
                           feature_names=self.feature_names)


class SmoothGrad(Hybrid):
    """The gradient averaged over noisy copies of the input (Smilkov et al. 2017).

    In captum's terms, ``NoiseTunnel(Saliency(model))`` with ``nt_type="smoothgrad"``, ``abs=False`` and, for a
    sample s, ``stdevs = noise_level * (s.max() - s.min())``. With a composite, LRP relevance is averaged over the
    noisy copies instead of gradients ("SmoothGrad x LRP"); ``delta`` is then the average residual of those
    explanations.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        noise_level: The noise's standard deviation as a fraction of each sample's value range (max - min), as in
            the paper.
        n_samples: How many noisy copies are averaged.
        seed: An int makes the noise reproducible (the global random state is left alone); None draws from torch's
            global generator.
        composite: A relprop composite (name or object) to use LRP's modified gradient instead of the plain one;
            None: the plain gradient.
        batch_size: The most model inputs in one forward pass (None: about two million input values per pass).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.

    Raises:
        TypeError: for a seed that is not an int or None.
        ValueError: for a negative noise_level or n_samples below 1.
    """

    copies_in_passes = True

    def __init__(self, model, noise_level: float = 0.1, n_samples: int = 25, seed: int | None = None, composite=None,
                 batch_size: int | None = None, output=None, forward=None, feature_names=None):
        super().__init__(model, composite, batch_size, output, forward, feature_names)
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or noise_level < 0:
            raise ValueError(f"noise_level must be a number >= 0 (a fraction of the input's range), got "
                             f"{noise_level!r}")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.noise_level = float(noise_level)
        self.n_samples = n_samples
        self.seed = seed

    def copies_per_input(self, sample_shape):
        return self.n_samples

    def noisy_copies(self, x: torch.Tensor):
        """n_samples noisy copies of x, one after the other (each one draw of the whole batch).

        Args:
            x: The input batch.

        Yields:
            The copies, one batch at a time.
        """
        dims = tuple(range(1, x.dim()))
        spread = (x.amax(dim=dims) - x.amin(dim=dims)) if dims else torch.zeros_like(x)
        sigma = (self.noise_level * spread).reshape((len(x),) + (1,) * (x.dim() - 1))
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        for _ in range(self.n_samples):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            yield (x + sigma * noise,)

    def __call__(self, x: torch.Tensor, target=None) -> Explanation:
        """Explain x for the target.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.

        Returns:
            An Explanation (relevance shaped like x).

        Raises:
            TypeError: for an x or target of the wrong type.
            ValueError: for a target that does not fit the output.
        """
        target = self.check(x, target)
        x = x.detach()
        output, g, index = self.resolve(x, target)
        total = torch.zeros_like(x)
        residual = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        explained_total = torch.zeros_like(residual)
        for (rows,), sample, _ in batched(self.noisy_copies(x), self.rows_per_pass(x)):
            if self.lrp is None:
                grad, _ = self.gradient(rows, g[sample])
                total.index_add_(0, sample, grad)
            else:
                explanation = self.explain_rows(rows, g[sample])
                total.index_add_(0, sample, explanation.relevance)
                residual.index_add_(0, sample, explanation.delta)
                explained_total.index_add_(0, sample, explanation.explained)
        average = total / self.n_samples
        if self.lrp is None:
            return Explanation(average, output, explained(output, g), undefined(x), index, gradient=average,
                               feature_names=self.feature_names)
        return Explanation(average, output, explained_total / self.n_samples, residual / self.n_samples, index,
                           feature_names=self.feature_names)


def path_points(steps: int, method: str) -> tuple[list[float], list[float]]:
    """Points alpha in [0, 1] along the straight path and their quadrature weights (they sum to 1).

    Args:
        steps: How many points.
        method: "gausslegendre", "riemann_left", "riemann_right", "riemann_middle" or "riemann_trapezoid" (captum's
            names).

    Returns:
        A pair (points, weights).

    Raises:
        ValueError: for riemann_trapezoid with fewer than 2 steps.
    """
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return list(0.5 * (nodes + 1)), list(0.5 * weights)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("method 'riemann_trapezoid' needs steps >= 2 (both ends of the path)")
        alphas = [k / (steps - 1) for k in range(steps)]
        weights = [1.0 / (steps - 1)] * steps
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return [(k + offset) / steps for k in range(steps)], [1.0 / steps] * steps


METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle", "riemann_right")


class IntegratedGradients(Hybrid):
    """(x - baseline) times the gradient averaged along the straight path from the baseline (Sundararajan 2017).

    ``explained`` is the target output at x minus at the baseline; ``delta`` is the completeness residual.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        baseline: A number, one sample (shared by the batch) or one baseline per sample; can be overridden per call.
        steps: The number of points along the path.
        method: The quadrature, with captum's names: "gausslegendre" (the default, as captum's), "riemann_left",
            "riemann_right", "riemann_middle", "riemann_trapezoid".
        composite: A relprop composite (name or object) to integrate LRP's modified gradient instead of the plain
            one.
        batch_size: The most model inputs in one forward pass (None: about two million input values per pass).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.

    Raises:
        ValueError: for steps below 1 or an unknown method.
    """

    copies_in_passes = True

    def __init__(self, model, baseline=0.0, steps: int = 50, method: str = "gausslegendre", composite=None,
                 batch_size: int | None = None, output=None, forward=None, feature_names=None):
        super().__init__(model, composite, batch_size, output, forward, feature_names)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.alphas, self.weights = path_points(steps, method)
        self.baseline = baseline
        self.steps = steps
        self.method = method

    def copies_per_input(self, sample_shape):
        return self.steps

    def __call__(self, x: torch.Tensor, target=None, *, baseline=None) -> Explanation:
        """Explain x for the target.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.
            baseline: Overrides the explainer's baseline for this call.

        Returns:
            An Explanation (relevance shaped like x).

        Raises:
            TypeError: for an x or target of the wrong type.
            ValueError: for a target that does not fit the output.
        """
        target = self.check(x, target)
        x = x.detach()
        start = baseline_like(x, self.baseline if baseline is None else baseline)
        output, g, index = self.resolve(x, target)
        difference = x - start
        path = ((start + alpha * difference,) for alpha in self.alphas)
        weights = torch.tensor(self.weights, dtype=x.dtype, device=x.device)
        total = torch.zeros_like(x)
        for (rows,), sample, step in batched(path, self.rows_per_pass(x)):
            if self.lrp is None:
                grad = self.gradient(rows, g[sample])[0]
            else:
                grad = self.explain_rows(rows, g[sample]).gradient
            total.index_add_(0, sample, grad * weights[step].reshape((-1,) + (1,) * (x.dim() - 1)))
        relevance = difference * total
        if self.lrp is None:
            change = explained(output, g) - explained(self.outputs(start), g)
        else:
            change = explained(output, g) - self.explain_rows(start, g).explained
        return Explanation(relevance, output, change, change - per_sample_sum(relevance), index, gradient=total,
                           feature_names=self.feature_names)


# ---- modified ReLU backward passes --------------------------------------------------------------------------------
class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        y = fn(x)
        ctx.save_for_backward(x > 0)
        return y

    @staticmethod
    def backward(ctx, g):
        (passed,) = ctx.saved_tensors
        return g.clamp(min=0) * passed, None


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0), None


class _ReplaceReLU(OpMode):
    """While a model runs, every ReLU (module, functional or method, in place or not: the op table's RECTIFIERS) uses
    ``function``'s backward."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def op(self, func, name, family, args, kwargs):
        if name not in RECTIFIERS or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        x = args[0]
        out = self.function.apply(x, out_of_place(func, name, args, kwargs))
        if self.in_place(func, name, args, kwargs):
            return x.copy_(out)  # keep in-place semantics: callers may read x afterwards
        return out


class GuidedBackprop(Gradient):
    """Guided backpropagation (Springenberg et al. 2015): through each ReLU only positive gradient where x > 0.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
    """

    relu_backward = _GuidedReLU

    def intercept(self):
        """The context in which every ReLU uses this method's backward.

        Returns:
            A context manager.
        """
        return _ReplaceReLU(self.relu_backward)


class Deconvnet(GuidedBackprop):
    """Deconvnet (Zeiler & Fergus 2014): each ReLU passes the positive part of the gradient, whatever its input.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
    """

    relu_backward = _DeconvReLU


class ExcitationBackprop(Attribution):
    """Excitation Backprop (Zhang et al. 2016): marginal winning probabilities from the target down to the input.

    On ReLU networks this is LRP-z+ with biases ignored on every linear and convolutional layer, started from the
    target's probability 1 (a class target) or from the given output relevance (a tensor or callable target), so
    relevance sums to 1 per sample for a class target; ``delta`` is what was lost where no input excites.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        canonizers: "auto" (batch norm merged into the layer before it), None, or a list (see relprop.canonizers).
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.

    Raises:
        ValueError: for an unknown canonizer.
    """

    saved_per_activation = LRP.saved_per_activation  # it runs LRP

    def __init__(self, model, output=None, canonizers="auto", forward=None, feature_names=None):
        super().__init__(model, None, output, forward, feature_names)
        rule = ZPlus(zero_bias=True)
        self.lrp = LRP(self.model, Composite(layer_map={"linear": rule, "conv": rule}), canonizers=canonizers,
                       output=output, forward=forward, feature_names=feature_names)

    def __call__(self, x: torch.Tensor, target=None) -> Explanation:
        """Explain x for the target.

        Args:
            x: The input batch, samples first.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.

        Returns:
            An Explanation (relevance shaped like x).

        Raises:
            TypeError: for an x or target of the wrong type.
            ValueError: for a target that does not fit the output.
        """
        target = self.check(x, target)
        caught = {}

        def prior(output):
            g, caught["index"] = output_gradient(output, target)
            return g if caught["index"] is not None else output * g

        explanation = self.lrp(x, prior)
        explanation.target = caught["index"]
        return explanation
