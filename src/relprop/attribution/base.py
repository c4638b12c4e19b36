"""What the attribution family shares: the model and its output, targets as an output gradient, baselines, batches.

Every method explains one linear function of the model's output, ``(output * g).sum()``: the target picks g at the
input's own output (one-hot for a class, ``relevance / output`` for an output-shaped relevance or a callable), and
every other point a method evaluates (noisy copies, path points, occluded inputs) is read through the same g.
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterable, Iterator

import torch

from .. import diagnose
from ..engine import UnsupportedOperation
from ..engine.steps import gradients_through
from .lrp import LRP
from .targets import check_input, check_target_type, output_gradient, tensor_output

# Default number of model inputs per forward pass: about this many input values, so a pass over 224x224 images
# holds 13 of them and one over 32x32 images 680.
VALUES_PER_PASS = 2 ** 21


class Attribution:
    """A model, how to read the tensor to explain from its output, and how many inputs a forward pass may hold.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        batch_size: The most model inputs in one forward pass (None: about two million input values per pass).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.

    Raises:
        TypeError: for output or forward that is not callable.
        ValueError: for a batch_size that is not a positive int.
    """

    # What memory.needed_bytes reads to estimate a pass (and copies_per_input below): a new method sets its own
    keeps_graph = True  # a pass keeps autograd's graph for a backward pass
    copies_in_passes = False  # its copies of each input run in passes of at most rows_per_pass inputs
    saved_per_activation = 1.0  # what its backward pass keeps per activation, relative to a plain gradient's

    def __init__(self, model: torch.nn.Module, batch_size: int | None = None, output: Callable | None = None,
                 forward: Callable | None = None, feature_names=None):
        model = diagnose.model_to_explain(model)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None (automatic), got {batch_size!r}")
        if output is not None and not callable(output):
            raise TypeError(f"output must be a callable picking the tensor to explain, got {type(output).__name__}")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be a callable(model, x) -> output, got {type(forward).__name__}")
        self.model = model
        self.batch_size = batch_size
        self.output = output
        self.forward = forward
        self.feature_names = list(feature_names) if feature_names is not None else None

    def copies_per_input(self, sample_shape: tuple) -> int:
        """How many model inputs explaining one sample shaped ``sample_shape`` takes.

        Args:
            sample_shape: One sample's shape (without the batch dimension).

        Returns:
            The count.
        """
        return 1

    def rows_per_pass(self, x: torch.Tensor) -> int:
        """The most model inputs one forward pass holds for a batch like x.

        Args:
            x: The batch.

        Returns:
            The count.
        """
        if self.batch_size is not None:
            return self.batch_size
        return max(1, VALUES_PER_PASS // max(1, x[0].numel()))

    def check(self, x, target):
        """x and target checked; returns the target as relprop takes it (numpy values converted).

        Args:
            x: The input batch.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.

        Returns:
            The target.

        Raises:
            TypeError: for an x or target of the wrong type.
            ValueError: for a target whose length is not the batch's.
        """
        check_input(self.model, x)
        target = check_target_type(target)
        if isinstance(target, (list, tuple)) or isinstance(target, torch.Tensor) and target.dim() > 0:
            if len(target) != len(x):
                raise ValueError(f"target gives {len(target)} values for a batch of {len(x)} samples; give one "
                                 "class for all samples, one per sample, or an output-shaped relevance tensor")
        return target

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """The tensor to explain for a batch of inputs: the model (or forward=) run on them, checked to give one
        output per input; a failing forward gets the likely user error and its fix.

        Args:
            inputs: A batch of model inputs.

        Returns:
            The output, one row per input.

        Raises:
            ValueError: for a forward that fails (RuntimeError from the model), naming the likely user error and its
            fix, or an output without one row per input.
        """
        try:
            with gradients_through(self.model):  # no cuDNN recurrent kernel, whose backward needs training mode
                output = self.model(inputs) if self.forward is None else self.forward(self.model, inputs)
        except UnsupportedOperation:
            raise
        except RuntimeError as error:
            raise diagnose.forward_failure(self.model, inputs, error) from error
        output = self.select(output)
        diagnose.check_output_batch(output, len(inputs))
        return output

    def select(self, output) -> torch.Tensor:
        """The tensor to explain from whatever the model returned.

        Args:
            output: What the model returned.

        Returns:
            A tensor.

        Raises:
            TypeError: when no tensor can be picked.
        """
        if self.output is not None:
            output = self.output(output)
        return tensor_output(output)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for x without gradients, in passes of at most rows_per_pass inputs.

        Args:
            x: The input batch, samples first.

        Returns:
            The output for every row of x.
        """
        size = self.rows_per_pass(x)
        with torch.no_grad():
            return torch.cat([self.run(chunk) for chunk in x.split(size)])

    def resolve(self, x: torch.Tensor, target):
        """(output, g, class index or None) at x: relevance at the output is output * g.

        Args:
            x: The input batch.
            target: What to explain: None (the predicted class; per location for outputs such as segmentation maps),
                a class int, one class int per sample, a bool mask or float tensor shaped like the output (the
                output relevance), or a callable(output) -> output relevance.

        Returns:
            A triple (output, g, class index or None).
        """
        output = self.outputs(x)
        g, index = output_gradient(output, target)
        return output, g, index

    def gradient(self, inputs: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient of (output * g).sum() at inputs, and the output.

        Args:
            inputs: A batch of model inputs.
            g: The output gradient (relevance at the output is output * g).

        Returns:
            A pair (gradient shaped like inputs, output).
        """
        leaf = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            output = self.run(leaf)
        return input_gradient(output, leaf, g), output.detach()


class Hybrid(Attribution):
    """A method that reads gradients either plainly or, given a composite, as LRP's modified gradient.

    Args:
        model: The torch.nn.Module to explain (a torch.compile'd one is explained through the module it wraps).
        composite: A relprop composite (name or object) to use LRP's modified gradient instead of the plain one;
            None: the plain gradient.
        batch_size: The most model inputs in one forward pass (None: about two million input values per pass).
        output: Picks the tensor to explain when the model returns a tuple, dict or model-output object, e.g.
            ``lambda out: out.logits``.
        forward: callable(model, x) -> output, for models not called as model(x), e.g. ``lambda model, embeddings:
            model(inputs_embeds=embeddings)``.
        feature_names: Names of the input's features (tabular data), kept on each Explanation.
    """

    def __init__(self, model, composite=None, batch_size=None, output=None, forward=None, feature_names=None):
        super().__init__(model, batch_size, output, forward, feature_names)
        self.lrp = None if composite is None else LRP(self.model, composite, output=output, forward=forward)

    @property
    def saved_per_activation(self) -> float:
        return 1.0 if self.lrp is None else self.lrp.saved_per_activation

    def resolve(self, x, target):
        if self.lrp is None:
            return super().resolve(x, target)
        # LRP may explain the logits under a softmax; catch g where LRP reads the target, so rows use the same g.
        caught = {}

        def catch(output):
            caught["g"], caught["index"] = output_gradient(output, target)
            return output * caught["g"]

        outputs, gs, indices = [], [], []
        for chunk in x.split(self.rows_per_pass(x)):
            outputs.append(self.lrp(chunk, catch).output)
            gs.append(caught["g"])
            indices.append(caught["index"])
        index = None if indices[0] is None else torch.cat(indices)
        return torch.cat(outputs), torch.cat(gs), index

    def explain_rows(self, inputs, g):
        """LRP of inputs explaining (output * g).sum(): its Explanation (relevance, gradient, explained, delta).

        Args:
            inputs: A batch of model inputs.
            g: The output gradient.

        Returns:
            An Explanation.
        """
        return self.lrp(inputs, lambda output: output * g)


def input_gradient(output: torch.Tensor, leaf: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The gradient of (output * g).sum() at leaf (zero where the output does not depend on it)."""
    if not output.requires_grad:
        raise ValueError("the model's output does not depend on its input through differentiable ops (was it "
                         "computed under torch.no_grad() or detached?); no gradient can reach the input")
    (grad,) = torch.autograd.grad(output, leaf, g, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def explained(output: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per sample: the output relevance (output * g) summed."""
    relevance = output * g
    return relevance.reshape(len(relevance), -1).sum(1) if relevance.dim() else relevance.reshape(1)


def per_sample_sum(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(len(tensor), -1).sum(1)


def undefined(x: torch.Tensor) -> torch.Tensor:
    """delta for methods whose attributions are not meant to add up to the output: NaN per sample."""
    return torch.full((len(x),), float("nan"), dtype=x.dtype, device=x.device)


def rows_of(target, sample: torch.Tensor):
    """The target for rows that repeat the samples given by ``sample`` (per-sample targets follow their rows)."""
    if isinstance(target, torch.Tensor) and target.dim() > 0:
        return target[sample.to(target.device)]
    if isinstance(target, (list, tuple)):
        return torch.as_tensor(target, device=sample.device)[sample]
    return target


def baseline_like(x: torch.Tensor, baseline, name: str = "baseline") -> torch.Tensor:
    """A baseline shaped like x, from a scalar, one sample (shared) or one baseline per sample."""
    if baseline is None:
        baseline = 0.0
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(baseline).__name__}")
    if not isinstance(baseline, torch.Tensor):
        return torch.full_like(x, float(baseline))
    baseline = baseline.detach().to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(baseline).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    sample = tuple(x.shape[1:])
    shape = tuple(baseline.shape)
    fits = False
    try:
        if baseline.dim() < x.dim():  # one sample, or anything broadcastable to one (e.g. per-channel (3, 1, 1))
            fits = torch.broadcast_shapes(shape, sample) == sample
        elif baseline.dim() == x.dim() and shape[0] in (1, len(x)):
            fits = torch.broadcast_shapes(shape[1:], sample) == sample
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{name} has shape {shape} but x has shape {tuple(x.shape)}; give a number, one sample "
                         f"shaped {sample} (or broadcastable to it) shared by the batch, or one {name} per sample "
                         f"shaped {tuple(x.shape)}")
    return baseline.expand_as(x) if baseline.dim() == x.dim() else baseline.expand(x.shape)


def batched(copies: Iterable[tuple[torch.Tensor, ...]], size: int) -> Iterator[tuple]:
    """Rows of consecutive copies of the batch, at most ``size`` at a time.

    Each copy is a tuple of tensors whose first dimension runs over the samples. Yields (tensors of the rows,
    sample index of each row, copy index of each row); copies are made lazily, in order, so a seeded generator
    gives the same rows whatever ``size`` is.
    """
    pending: list[tuple] = []
    count = 0
    for number, copy in enumerate(copies):
        samples = len(copy[0])
        start = 0
        while start < samples:
            take = min(samples - start, size - count)
            index = torch.arange(start, start + take, device=copy[0].device)
            pending.append((tuple(t[start:start + take] for t in copy), index, torch.full_like(index, number)))
            count += take
            start += take
            if count == size:
                yield _join(pending)
                pending, count = [], 0
    if pending:
        yield _join(pending)


def _join(pending):
    tensors = tuple(torch.cat(parts) for parts in zip(*(p[0] for p in pending)))
    return tensors, torch.cat([p[1] for p in pending]), torch.cat([p[2] for p in pending])


def positional_count(func: Callable) -> int:
    """How many positional arguments func accepts (a large number for *args)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 3
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return 3
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
