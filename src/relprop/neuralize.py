"""Neuralized k-means: cluster assignments as a network that LRP can explain (Kauffmann et al., "From Clustering to
Cluster Explanations via Neural Networks", IEEE TNNLS 2022).

k-means assigns x to argmin_k ||x - mu_k||^2, which is neither continuous nor a measure of membership. The same
assignment is argmax_c f_c(x) with the cluster discriminants

    f_c(x) = min_{k != c} h_ck(x),   h_ck(x) = ||x - mu_k||^2 - ||x - mu_c||^2 = w_ck . x + b_ck,
    w_ck = 2 (mu_c - mu_k),   b_ck = ||mu_k||^2 - ||mu_c||^2:

a linear layer (``Discriminants``) followed by a min over the competitors k (``MinPool``; ``LogMeanExpPool`` for a
smooth min). f_c(x) > 0 exactly when x lies in cluster c, and grows the deeper inside it lies. The composite "neon"
explains it with the paper's rules: each f_c shared among its competitors by a soft-min of stiffness beta
(rules.SoftMin), then each h_ck over the features with the root point at the midpoint (mu_c + mu_k) / 2
(rules.Midpoint), which conserves relevance exactly.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class Discriminants(nn.Module):
    """h_ck(x) = w_ck . x + b_ck for every cluster c and competitor k != c: output (..., K, K - 1).

    Args:
        centroids: (K, D) cluster centroids.

    Raises:
        ValueError: for centroids k-means cannot be neuralized from (see check_centroids).
    """

    def __init__(self, centroids: torch.Tensor):
        super().__init__()
        centroids = check_centroids(centroids)
        count = centroids.shape[0]
        own = torch.arange(count).repeat_interleave(count - 1)  # c, each once per competitor
        competitor = torch.tensor([k for c in range(count) for k in range(count) if k != c])
        mu_c, mu_k = centroids[own], centroids[competitor]
        self.register_buffer("centroids", centroids)
        self.register_buffer("weight", 2 * (mu_c - mu_k))
        self.register_buffer("bias", (mu_k * mu_k).sum(1) - (mu_c * mu_c).sum(1))
        self.register_buffer("midpoints", (mu_c + mu_k) / 2)  # the root points of rules.Midpoint: h_ck = 0 there
        self.register_buffer("competitors", competitor.reshape(count, count - 1))  # k of each column, per c

    @property
    def clusters(self) -> int:
        """The number of clusters K."""
        return self.centroids.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every discriminant of x.

        Args:
            x: Inputs (..., D).

        Returns:
            (..., K, K - 1).

        Raises:
            ValueError: for another number of features.
            TypeError: for a dtype other than the centroids'.
        """
        features = self.centroids.shape[1]
        if x.dim() < 1 or x.shape[-1] != features:
            raise ValueError(f"neuralized k-means: the input has {x.shape[-1] if x.dim() else 0} features (shape "
                             f"{tuple(x.shape)}), the centroids {features}; give it what k-means was fitted on "
                             "(flatten or pool feature maps first)")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"neuralized k-means: the input is {x.dtype}, the centroids {self.weight.dtype}; call "
                            f".to({x.dtype}) on the neuralized model (scikit-learn's centroids are float64)")
        return nn.functional.linear(x, self.weight, self.bias).unflatten(-1, (self.clusters, self.clusters - 1))


class MinPool(nn.Module):
    """The minimum over the last dimension (the competitors): exact; LRP gives it to the winner unless the composite
    maps rules.SoftMin to it."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """The minimum over competitors.

        Args:
            s: Discriminants (..., K, K - 1).

        Returns:
            (..., K).
        """
        return s.amin(-1)

    def extra_repr(self) -> str:
        return "dim=-1"


class LogMeanExpPool(nn.Module):
    """beta^-1 log mean_k exp(beta s_k) over the last dimension: a smooth min for beta < 0 (the min as beta -> -inf,
    the mean at beta -> 0), a smooth max for beta > 0. Its gradient is the soft-min weights softmax(beta s).

    Args:
        beta: The stiffness: negative for a soft min.

    Raises:
        ValueError: for a beta that is zero or not finite.
    """

    def __init__(self, beta: float = -1.0):
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta == 0:
            raise ValueError(f"LogMeanExpPool needs a finite non-zero beta (< 0 for a soft min), got {beta!r}; "
                             "at beta = 0 it is the mean (use s.mean(-1))")
        self.beta = float(beta)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """The smooth min (or max) over competitors.

        Args:
            s: Discriminants (..., K, K - 1).

        Returns:
            (..., K).
        """
        return (torch.logsumexp(self.beta * s, -1) - math.log(s.shape[-1])) / self.beta

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class NeuralizedKMeans(nn.Sequential):
    """f_c(x) for each cluster c: Discriminants then MinPool (or LogMeanExpPool(beta) when beta is given).

    Args:
        centroids: (K, D) cluster centroids.
        beta: None for the exact min (MinPool), a negative number for LogMeanExpPool(beta).
    """

    def __init__(self, centroids, beta: float | None = None):
        super().__init__(Discriminants(centroids), MinPool() if beta is None else LogMeanExpPool(beta))

    @property
    def centroids(self) -> torch.Tensor:
        """The (K, D) centroids, read back from the discriminants."""
        return self[0].centroids

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The k-means assignment argmin_k ||x - mu_k||, for checks (argmax of this module's output equals it).

        Args:
            x: Inputs (N, D).

        Returns:
            (N,) cluster indices.
        """
        return torch.cdist(x.to(self.centroids.dtype), self.centroids).argmin(-1)


def check_centroids(centroids) -> torch.Tensor:
    """Centroids as a (K, D) floating-point tensor, or an error naming what k-means cannot be neuralized from.

    Args:
        centroids: A (K, D) array or tensor.

    Returns:
        A floating-point tensor.

    Raises:
        ValueError: for another shape, fewer than two clusters, centroids that are not finite, or identical
            centroids.
    """
    tensor = torch.as_tensor(centroids)
    if not tensor.is_floating_point():
        tensor = tensor.double()
    tensor = tensor.detach().clone()
    if tensor.dim() != 2:
        raise ValueError(f"centroids must be a (clusters, features) matrix, got shape {tuple(tensor.shape)}")
    count = tensor.shape[0]
    if count < 2:
        raise ValueError(f"k-means with {count} cluster{'s' if count != 1 else ''}: every input is in the same "
                         "cluster, there is nothing to explain (a discriminant needs a competing cluster); fit "
                         "with n_clusters >= 2")
    bad = sorted(set(torch.nonzero(~torch.isfinite(tensor))[:, 0].tolist()))
    if bad:
        raise ValueError(f"centroids {bad} are not finite (an empty cluster's mean is NaN): refit, or drop those "
                         "clusters")
    same = torch.nonzero((tensor[:, None, :] == tensor[None, :, :]).all(-1))
    pairs = [(int(a), int(b)) for a, b in same.tolist() if a < b]
    if pairs:
        a, b = pairs[0]
        raise ValueError(f"centroids {a} and {b} are identical: their clusters cannot be told apart (the "
                         f"discriminant between them is 0 everywhere); drop one ({len(pairs)} such pair(s))")
    return tensor


class _Trace(TorchFunctionMode):
    """Records a forward's torch.cdist calls and which of their outputs argmin was taken of."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []  # (features, centroids, distances, p) per cdist call, in order
        self.assignments: dict[int, tuple] = {}  # cdist call -> (argmin's result, its dim)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.cdist:
            bound = dict(zip(("x1", "x2", "p"), args), **kwargs)
            self.calls.append((bound["x1"], bound["x2"], out, bound.get("p", 2.0)))
        elif getattr(func, "__name__", None) == "argmin" and args:
            for position, (_, _, distances, _) in enumerate(self.calls):
                if args[0] is distances:
                    dim = args[1] if len(args) > 1 else kwargs.get("dim")
                    self.assignments[position] = (out, dim)
        return out


class _Swap(TorchFunctionMode):
    """Inside a forward: the chosen cdist call's argmin replaced by the neuralized k-means of that call's features."""

    def __init__(self, position: int, kmeans: NeuralizedKMeans):
        super().__init__()
        self.position, self.kmeans = position, kmeans
        self.seen, self.distances, self.features, self.result = 0, None, None, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.cdist:
            self.seen += 1
            if self.seen - 1 == self.position:
                self.features = args[0] if args else kwargs["x1"]
                self.distances = torch.empty(0)  # stands for the distances, which only argmin reads
                return self.distances
        elif getattr(func, "__name__", None) == "argmin" and args and args[0] is self.distances is not None:
            self.result = self.kmeans(self.features)
            return self.result
        return func(*args, **kwargs)


class NeuralizedModel(nn.Module):
    """A model whose forward returns torch.cdist(features, centroids).argmin(), with that assignment replaced by
    the K discriminants f_c of its features; the model itself runs unchanged (it is not modified).

    Args:
        model: The model (run unchanged).
        position: Which torch.cdist call of its forward is the assignment.
        centroids: (K, D) cluster centroids.
        beta: As NeuralizedKMeans takes it.
    """

    def __init__(self, model: nn.Module, position: int, centroids: torch.Tensor, beta: float | None = None):
        super().__init__()
        self.model, self.position = model, position
        self.kmeans = NeuralizedKMeans(centroids, beta)

    def forward(self, x):
        """The model's forward with the assignment replaced by the discriminants.

        Args:
            x: The model's input.

        Returns:
            (N, K) discriminants.

        Raises:
            RuntimeError: when the forward no longer makes the traced cdist call.
        """
        swap = _Swap(self.position, self.kmeans)
        with swap:
            output = self.model(x)
        if swap.result is None or output is not swap.result:
            raise RuntimeError("the model's forward no longer returns torch.cdist(features, centroids).argmin() as it "
                               "did when it was neuralized (a data-dependent branch?); neuralize its centroids instead")
        return output


def _depends_on(tensor: torch.Tensor, leaf: torch.Tensor) -> bool:
    """Whether tensor was computed from leaf (its autograd graph reaches leaf)."""
    if tensor is leaf:
        return True
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if getattr(node, "variable", None) is leaf:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def _neuralize_model(model: nn.Module, example: torch.Tensor, beta: float | None) -> NeuralizedModel:
    """Find the cdist-then-argmin the model returns, by data flow from example, and wrap the model around it."""
    if not isinstance(example, torch.Tensor):
        raise TypeError("neuralizing a model needs an example input to trace: neuralize(model, example=x)")
    moody = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)  # modules that act differently in training
    if any(module.training and isinstance(module, moody) for module in model.modules()):
        raise ValueError(f"{type(model).__name__} has batch norm or dropout in training mode: call .eval() first "
                         "(tracing its forward would update batch-norm statistics, and dropout would change features)")
    leaf = example.detach().clone().requires_grad_(True)
    trace = _Trace()
    with torch.enable_grad(), trace:
        output = model(leaf)
    found = [position for position, (result, _) in trace.assignments.items() if result is output]
    if not found:
        raise ValueError(f"{type(model).__name__} does not return torch.cdist(features, centroids).argmin(): found "
                         f"{len(trace.calls)} cdist call(s) and argmin of {len(trace.assignments)} of them, none being "
                         "the model's output; neuralize its centroids and put the features before it instead")
    position = found[0]
    features, centroids, _, p = trace.calls[position]
    dim = trace.assignments[position][1]
    if p != 2 or dim not in (-1, features.dim() - 1):
        raise ValueError(f"k-means assigns by the Euclidean distance along the centroids (p=2, argmin(-1)); the model "
                         f"uses p={p}, argmin(dim={dim})")
    if not _depends_on(features, leaf):
        raise ValueError("the first argument of the model's torch.cdist does not depend on its input: nothing to "
                         "explain (the features must come from the input, the centroids from the model)")
    if _depends_on(centroids, leaf):
        raise ValueError("the centroids of the model's torch.cdist depend on its input: they must be fixed (a "
                         "parameter, a buffer or a constant) for the assignment to be k-means")
    return NeuralizedModel(model, position, centroids.detach(), beta)


def neuralize(kmeans, beta: float | None = None, example: torch.Tensor | None = None) -> nn.Module:
    """The neuralized k-means of a fitted scikit-learn KMeans / MiniBatchKMeans or a (K, D) centroid tensor, or of
    a model returning torch.cdist(features, centroids).argmin() (found from ``example``, the model left unchanged).

    Its outputs are the K discriminants f_c, whose argmax is the k-means assignment on every input.

    Args:
        kmeans: A fitted KMeans / MiniBatchKMeans, (K, D) centroids, or a model as above.
        beta: None for the exact min over competitors (MinPool), a negative number for LogMeanExpPool(beta).
        example: An input of the model, to trace (models only).

    Returns:
        An nn.Module whose output is (N, K).

    Raises:
        ValueError: for an unfitted estimator, bad centroids, or a model that does not return such an assignment.
        TypeError: for a model without example.

    Example:
        >>> import torch
        >>> from relprop.neuralize import neuralize
        >>> centroids = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
        >>> kmeans = neuralize(centroids)
        >>> kmeans(torch.tensor([[1.0, 0.0], [3.0, 1.0]])).argmax(1).tolist()
        [0, 1]
    """
    if isinstance(kmeans, nn.Module):
        return _neuralize_model(kmeans, example, beta)
    if hasattr(kmeans, "n_clusters") and hasattr(kmeans, "fit"):  # a scikit-learn estimator
        if not hasattr(kmeans, "cluster_centers_"):
            raise ValueError(f"{type(kmeans).__name__} is not fitted: call .fit(features) first")
        centroids = kmeans.cluster_centers_
        labels = getattr(kmeans, "labels_", None)
        if labels is not None:
            empty = sorted(set(range(len(centroids))) - {int(label) for label in labels})
            if empty:
                warnings.warn(f"clusters {empty} of {type(kmeans).__name__} have no training sample: their "
                              "discriminants describe regions no sample fell in", UserWarning, stacklevel=2)
    else:
        centroids = kmeans
    return NeuralizedKMeans(centroids, beta)


__all__ = ["Discriminants", "MinPool", "LogMeanExpPool", "NeuralizedKMeans", "NeuralizedModel", "neuralize",
           "check_centroids"]
