"""Concept activation vectors (CAVs) of an artifact at a layer, from samples with and without it.

Activations h of a layer are read in a CAV space: the flattened activation (``pooling="none"``: a direction per
channel and position, for an artifact at a fixed place) or the mean over positions (``pooling="mean"``: a direction
over channels, wherever the artifact is). With a_i the artifact samples and c_j the clean ones in that space:

- **pattern CAV** (Pahde et al. 2024, "Navigating Neural Space"): v = mean(a) - mean(c), the direction in which the
  artifact moves activations; found more reliably than a filter's.
- **filter CAV** (TCAV's): the weight vector w of a linear classifier (logistic regression) separating a from c,
  signed so that w . (mean(a) - mean(c)) > 0.

- **concept CAV**: the channels a CRP concept names (``from_concept``), equally weighted, pooled by mean.

All are scaled to unit length. The CAV keeps the mean of each group, whose coordinates v . mean are the levels the
corrections move activations to (P-ClArC: the clean level; A-ClArC: the artifact level).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

POOLINGS = ("none", "mean")
KINDS = ("pattern", "filter")  # and "concept": channels a CRP concept names (from_concept)
MIN_SAMPLES = 2  # per group; a direction from fewer is noise (tens of samples per group are better)


@dataclass
class CAV:
    """A unit direction in a layer's activation space, with the mean activations of both groups.

    Attributes:
        layer: The layer's qualified name.
        direction: (features,) unit vector.
        clean_mean: (features,) mean of the samples without the artifact.
        artifact_mean: (features,) mean of the samples with it.
        shape: One sample's activation shape at the layer (without the batch dimension).
        pooling: "none" or "mean" (see the module docstring).
        kind: "pattern", "filter" or "concept".
        counts: (artifact samples, clean samples) it was computed from.
    """

    layer: str
    direction: torch.Tensor  # (features,) unit length
    clean_mean: torch.Tensor  # (features,) mean of the samples without the artifact
    artifact_mean: torch.Tensor  # (features,) mean of the samples with it
    shape: tuple  # one sample's activation shape at the layer (without the batch dimension)
    pooling: str = "none"
    kind: str = "pattern"
    counts: tuple = (0, 0)  # (artifact samples, clean samples) it was computed from

    @property
    def clean_level(self) -> torch.Tensor:
        """The clean samples' mean position along the CAV, v . mean(clean): where P-ClArC moves activations."""
        return self.direction @ self.clean_mean

    @property
    def artifact_level(self) -> torch.Tensor:
        """The artifact samples' mean position along the CAV, v . mean(artifact): where A-ClArC moves activations."""
        return self.direction @ self.artifact_mean

    def features(self, activation: torch.Tensor) -> torch.Tensor:
        """(N, features): activations of the layer in the CAV's space.

        Args:
            activation: The layer's activations (N, *shape).

        Returns:
            A tensor.

        Raises:
            ValueError: when their shape does not fit the CAV.
        """
        self.check(activation)
        return to_features(activation, self.pooling)

    def coordinate(self, activation: torch.Tensor) -> torch.Tensor:
        """(N,): each sample's position along the CAV, v . features(h).

        Args:
            activation: The layer's activations (N, *shape).

        Returns:
            (N,) coordinates.
        """
        return self.features(activation) @ self.direction.to(activation)

    def spread(self, activation: torch.Tensor) -> torch.Tensor:
        """The CAV as a change of the layer's activation (broadcast over positions when pooled by mean), so that
        features(h + t * spread) = features(h) + t * v.

        Args:
            activation: The layer's activations (N, *shape).

        Returns:
            A tensor shaped like one sample's activation.
        """
        direction = self.direction.to(activation)
        if self.pooling == "none":
            return direction.reshape(activation.shape[1:])
        return direction.reshape(-1, *([1] * (activation.dim() - 2)))

    def check(self, activation: torch.Tensor) -> None:
        """Refuse activations of another shape than the CAV's (a layer whose output changes shape with the input).

        Args:
            activation: The layer's activations (N, *shape).

        Raises:
            TypeError: when the layer returns something other than a tensor.
            ValueError: for another shape.
        """
        if not isinstance(activation, torch.Tensor):
            raise TypeError(f"layer {self.layer!r} returns a {type(activation).__name__}, not a tensor; pick a "
                            "module whose output is one tensor")
        got = tuple(activation.shape[1:])
        if self.pooling == "none" and got != tuple(self.shape):
            raise ValueError(f"layer {self.layer!r} gives activations of shape {got} but the CAV was computed on "
                             f"{tuple(self.shape)}; use inputs of the CAV's size, or a CAV with pooling='mean' "
                             "(a direction over channels, independent of the positions)")
        if self.pooling == "mean" and (activation.dim() < 2 or activation.shape[1] != self.shape[0]):
            raise ValueError(f"layer {self.layer!r} gives {got[0] if got else 0} channels but the CAV has "
                             f"{self.shape[0]}; the model or the layer is not the one the CAV was computed for")

    def save(self, path) -> Path:
        """Write the CAV as a safetensors file (its settings in the file's metadata).

        Args:
            path: The file's path.

        Returns:
            The path written.
        """
        from safetensors.torch import save_file

        from ..viz.save import atomic_path

        meta = {"layer": self.layer, "shape": list(self.shape), "pooling": self.pooling, "kind": self.kind,
                "counts": list(self.counts)}
        tensors = {"direction": self.direction, "clean_mean": self.clean_mean, "artifact_mean": self.artifact_mean}
        with atomic_path(path) as temporary:
            save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, str(temporary),
                      metadata={"relprop_cav": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path) -> CAV:
        """A CAV written by :meth:`save`.

        Args:
            path: The file's path.

        Returns:
            The CAV.

        Raises:
            ValueError: for a file relprop did not write.
        """
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = (handle.metadata() or {}).get("relprop_cav")
            if meta is None:
                raise ValueError(f"{path} is not a CAV written by relprop (no relprop_cav metadata)")
            tensors = {key: handle.get_tensor(key) for key in ("direction", "clean_mean", "artifact_mean")}
        meta = json.loads(meta)
        return cls(meta["layer"], tensors["direction"], tensors["clean_mean"], tensors["artifact_mean"],
                   tuple(meta["shape"]), meta["pooling"], meta["kind"], tuple(meta["counts"]))


def to_features(activation: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, features): flattened activations, or their mean over every dimension after the channels.

    Args:
        activation: The layer's activations (N, *shape).
        pooling: "none" (flattened activations: a direction per channel and position) or "mean" (mean over
            positions: a direction over channels).

    Returns:
        (N, features).

    Raises:
        ValueError: for an unknown pooling.
    """
    if pooling == "none":
        return activation.flatten(1)
    if pooling == "mean":
        return activation.flatten(2).mean(2) if activation.dim() > 2 else activation
    raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")


# ---- the CAV from activations -----------------------------------------------------------------------------------
def from_activations(artifact: torch.Tensor, clean: torch.Tensor, layer: str = "", kind: str = "pattern",
                     pooling: str = "none", seed: int = 0) -> CAV:
    """The CAV separating activations with the artifact (N_a, *shape) from those without (N_c, *shape).

    Args:
        artifact: Activations of samples with the artifact (N_a, *shape).
        clean: Activations of samples without it (N_c, *shape).
        layer: The layer's name, recorded on the CAV.
        kind: "pattern" (difference of means) or "filter" (a logistic regression's weights).
        pooling: "none" (flattened activations: a direction per channel and position) or "mean" (mean over
            positions: a direction over channels).
        seed: Seeds the logistic regression of a filter CAV.

    Returns:
        The CAV.

    Raises:
        ValueError: for an unknown kind or pooling, fewer than two samples per group, shapes that differ, or groups
            with the same mean.

    Example:
        >>> import torch
        >>> from relprop import correct
        >>> clean = torch.zeros(4, 3)
        >>> artifact = torch.tensor([[0.0, 2.0, 0.0]]).repeat(4, 1)
        >>> correct.from_activations(artifact, clean).direction
        tensor([0., 1., 0.])
    """
    if kind not in KINDS:
        raise ValueError(f"unknown CAV kind {kind!r}; choose from {', '.join(KINDS)}")
    artifact, clean = torch.as_tensor(artifact).float(), torch.as_tensor(clean).float()
    _check_counts(artifact, clean)
    if artifact.shape[1:] != clean.shape[1:]:
        raise ValueError(f"the activations with the artifact have shape {tuple(artifact.shape[1:])} but those "
                         f"without it {tuple(clean.shape[1:])}; the layer's output changes shape with the input: "
                         "use inputs of one size, or pooling='mean'")
    a, c = to_features(artifact, pooling), to_features(clean, pooling)
    artifact_mean, clean_mean = a.mean(0), c.mean(0)
    difference = artifact_mean - clean_mean
    if kind == "pattern":
        direction = difference
    else:
        direction = _filter_direction(a, c, seed)
        if direction @ difference < 0:
            direction = -direction
    norm = direction.norm()
    if not torch.isfinite(norm) or norm <= 0:
        raise ValueError(f"the samples with and without the artifact have the same mean activation at layer "
                         f"{layer!r}; the layer does not see the artifact (try a later layer)")
    return CAV(layer, direction / norm, clean_mean, artifact_mean, tuple(artifact.shape[1:]), pooling, kind,
               (len(artifact), len(clean)))


def _check_counts(artifact, clean) -> None:
    for name, group in (("with the artifact", artifact), ("without it", clean)):
        if len(group) < MIN_SAMPLES:
            raise ValueError(f"{len(group)} sample(s) {name}; a CAV needs at least {MIN_SAMPLES} per group (tens "
                             "are better): give more samples, or a larger cluster")


def _filter_direction(artifact: torch.Tensor, clean: torch.Tensor, seed: int) -> torch.Tensor:
    """The weights of a logistic regression telling artifact (1) from clean (0) features."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ValueError("a filter CAV needs scikit-learn (pip install 'relprop[analysis]'); or use the pattern "
                         "CAV, which needs nothing more") from None

    features = torch.cat([artifact, clean]).double().numpy()
    labels = np.r_[np.ones(len(artifact)), np.zeros(len(clean))]
    scale = features.std(0).mean() or 1.0  # the regularisation should not depend on the activations' scale
    classifier = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(features / scale, labels)
    return torch.from_numpy(classifier.coef_[0]).float()


# ---- activations of samples -------------------------------------------------------------------------------------
@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """The model in eval mode for the block (a measurement must not update batch-norm statistics), each module's mode restored after.

    Args:
        model: The model.

    Returns:
        A context manager.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


def layer_module(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    """The module named layer.

    Args:
        model: The model (left unchanged).
        layer: The qualified name of the module whose output is read (as model.named_modules() names it).

    Returns:
        The module.

    Raises:
        ValueError: for an unknown name (with the closest names).
    """
    from ..concepts.conditional import check_layer

    modules = dict(model.named_modules())
    check_layer(modules, layer)
    return modules[layer]


def activations(model: torch.nn.Module, inputs: torch.Tensor, layer: str, batch_size: int = 64) -> torch.Tensor:
    """(N, *shape) output of the layer for the inputs, in batches, without gradients; the model is not changed.

    Args:
        model: The model (left unchanged).
        inputs: The inputs, samples first.
        layer: The qualified name of the module whose output is read (as model.named_modules() names it).
        batch_size: Samples per forward pass.

    Returns:
        (N, *shape) activations.

    Raises:
        TypeError: when the layer returns something other than a tensor.
        ValueError: when the layer does not run or gives activations of different shapes.
    """
    module = layer_module(model, layer)
    captured: list = []

    def keep(module, arguments, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {layer!r} returns a {type(output).__name__}, not a tensor; pick a module whose "
                            "output is one tensor")
        captured.append(output.detach().float().cpu())

    handle = module.register_forward_hook(keep)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with torch.no_grad(), evaluating(model):
            for start in range(0, len(inputs), batch_size):
                count = len(captured)
                model(inputs[start:start + batch_size].to(device))
                if len(captured) == count:
                    raise ValueError(f"layer {layer!r} did not run in the forward pass; pick a layer the model uses")
                del captured[count + 1:]  # a module run twice: its first call
    finally:
        handle.remove()
    shapes = {tuple(block.shape[1:]) for block in captured}
    if len(shapes) > 1:
        raise ValueError(f"layer {layer!r} gives activations of different shapes {sorted(shapes)} for different "
                         "inputs; use inputs of one size, or pooling='mean'")
    return torch.cat(captured) if captured else torch.empty(0)


def from_inputs(model: torch.nn.Module, artifact: torch.Tensor, clean: torch.Tensor, layer: str,
                kind: str = "pattern", pooling: str = "none", batch_size: int = 64, seed: int = 0) -> CAV:
    """The CAV of the layer from model inputs with the artifact and without it.

    Args:
        model: The model (left unchanged).
        artifact: Inputs with the artifact.
        clean: Inputs without it.
        layer: The qualified name of the module whose output is read (as model.named_modules() names it).
        kind: "pattern" (difference of means) or "filter" (a logistic regression's weights).
        pooling: "none" (flattened activations: a direction per channel and position) or "mean" (mean over
            positions: a direction over channels).
        batch_size: Samples per forward pass.
        seed: Seeds the logistic regression of a filter CAV.

    Returns:
        The CAV.

    Raises:
        ValueError: as from_activations, or for inputs that cannot be batched together.
    """
    _check_counts(artifact, clean)
    layer_module(model, layer)
    try:
        joined = activations(model, torch.cat([artifact, clean]), layer, batch_size)
    except RuntimeError as error:  # inputs of different sizes cannot even be stacked
        raise ValueError(f"the inputs cannot be batched together ({error}); use inputs of one size") from error
    return from_activations(joined[:len(artifact)], joined[len(artifact):], layer, kind, pooling, seed)


def from_concept(model: torch.nn.Module, layer: str, channels, artifact: torch.Tensor, clean: torch.Tensor,
                 batch_size: int = 64) -> CAV:
    """A CAV along a CRP concept: the unit vector over the layer's channels (pooling "mean"), with the levels of
    samples with and without the artifact the concept carries.

    Args:
        model: The model (left unchanged).
        layer: The qualified name of the module whose output is read (as model.named_modules() names it).
        channels: The channel indices the concept names.
        artifact: Inputs with the artifact.
        clean: Inputs without it.
        batch_size: Samples per forward pass.

    Returns:
        The CAV (kind "concept").

    Raises:
        ValueError: for channels the layer does not have.
    """
    _check_counts(artifact, clean)
    raw = activations(model, torch.cat([artifact, clean]), layer, batch_size)
    joined = to_features(raw, "mean")
    channels = sorted({int(c) for c in ([channels] if isinstance(channels, int) else channels)})
    if not channels or not 0 <= channels[0] <= channels[-1] < joined.shape[1]:
        raise ValueError(f"channels {channels} do not fit layer {layer!r}, which has {joined.shape[1]} channels")
    direction = torch.zeros(joined.shape[1])
    direction[channels] = 1.0 / len(channels) ** 0.5
    return CAV(layer, direction, joined[len(artifact):].mean(0), joined[:len(artifact)].mean(0), tuple(raw.shape[1:]),
               "mean",
               "concept", (len(artifact), len(clean)))


def read_inputs(source, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N, ...), labels (N,)) of the source's samples at indices (a relprop.datasets Source).

    Args:
        source: A relprop.datasets Source.
        indices: Sample indices.

    Returns:
        A pair (inputs, labels).

    Raises:
        ValueError: when the samples differ in shape.
    """
    samples = [source.read(int(index)) for index in indices]
    if not samples:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    shapes = {tuple(sample.x.shape) for sample in samples}
    if len(shapes) > 1:
        raise ValueError(f"the samples have different shapes {sorted(shapes)[:3]}; the data set must give inputs of "
                         "one size (set --size for image folders)")
    return torch.stack([sample.x for sample in samples]), torch.tensor([sample.label for sample in samples])


def from_ids(model, source, artifact_ids, clean_ids, layer: str, **options) -> CAV:
    """The CAV from a data set's sample ids (as the source names them, or indices) with and without the artifact.

    Args:
        model: The model (left unchanged).
        source: A relprop.datasets Source.
        artifact_ids: Ids (or indices) of samples with the artifact.
        clean_ids: Ids (or indices) of samples without it.
        layer: The qualified name of the module whose output is read (as model.named_modules() names it).
        **options: kind, pooling, batch_size, seed, as from_inputs takes them.

    Returns:
        The CAV.

    Raises:
        ValueError: for an unknown id or an index out of range.
    """
    positions = {source.id(i): i for i in range(len(source))}

    def index(sample):
        if isinstance(sample, (int, np.integer)):
            if not 0 <= int(sample) < len(source):
                raise ValueError(f"sample index {sample} is out of range for a data set of {len(source)} samples")
            return int(sample)
        if str(sample) not in positions:
            raise ValueError(f"the data set has no sample with id {sample!r}")
        return positions[str(sample)]

    artifact, _ = read_inputs(source, [index(s) for s in artifact_ids])
    clean, _ = read_inputs(source, [index(s) for s in clean_ids])
    return from_inputs(model, artifact, clean, layer, **options)


# ---- the CAV from a SpRAy cluster --------------------------------------------------------------------------------
@dataclass
class ClusterSamples:
    """Store positions of a SpRAy cluster (the artifact) and of the rest of its class (clean).

    Attributes:
        artifact: Store positions of the cluster's members.
        clean: Store positions of the class's other clustered samples.
        clustering: The clustering they come from.
    """

    artifact: np.ndarray
    clean: np.ndarray
    clustering: str


def cluster_samples(store, class_index: int, cluster: int, clustering: str | None = None) -> ClusterSamples:
    """The members of a stored SpRAy cluster of a class, and the class's other clustered samples (noise left out).

    Args:
        store: The path of a ``relprop run`` store with SpRAy results.
        class_index: The class whose SpRAy analysis holds the cluster.
        cluster: The cluster's label.
        clustering: The clustering's name (e.g. "kmeans-3"); None: the analysis's chosen one.

    Returns:
        A ClusterSamples.

    Raises:
        ValueError: when the store has no analysis of the class, no such clustering or no such cluster.
    """
    from ..analysis import spray

    stored = spray.stored(store)
    name = f"class-{int(class_index)}"
    if name not in stored:
        have = ", ".join(stored) or "none"
        raise ValueError(f"{store} has no SpRAy results for class {class_index} (it has: {have}); run `relprop spray "
                         f"{store} --classes {class_index}` first")
    analysis = spray.read(store, name)
    clustering = clustering or analysis.chosen
    if clustering not in analysis.clusters:
        raise ValueError(f"{name} of {store} has no clustering {clustering!r}; it has "
                         f"{', '.join(sorted(analysis.clusters))}")
    labels = analysis.clusters[clustering]
    ids = sorted(set(labels.tolist()) - {-1})
    if int(cluster) not in ids:
        raise ValueError(f"clustering {clustering} of {name} has no cluster {cluster}; its clusters are "
                         f"{', '.join(map(str, ids))} (sizes {np.bincount(labels[labels >= 0]).tolist()})")
    inside = labels == int(cluster)
    return ClusterSamples(analysis.index[inside], analysis.index[~inside & (labels >= 0)], clustering)


def from_spray(store, class_index: int, cluster: int, layer: str, model=None, source=None,
               clustering: str | None = None, **options) -> CAV:
    """The CAV of a SpRAy cluster: its members carry the artifact, the rest of the class does not.

    Args:
        store: The path of a ``relprop run`` store with SpRAy results.
        class_index: The class whose SpRAy analysis holds the cluster.
        cluster: The cluster's label.
        layer: The qualified name of the module whose output is read (as model.named_modules() names it).
        model: The model; None: the store's own model spec.
        source: The data set (a relprop.datasets Source, or a data spec); None: the store's own.
        clustering: The clustering's name (e.g. "kmeans-3"); None: the analysis's chosen one.
        **options: kind, pooling, batch_size, seed, as from_inputs takes them.

    Returns:
        The CAV.
    """
    samples = cluster_samples(store, class_index, cluster, clustering)
    model, source = store_model_and_source(store, model, source)
    artifact, _ = read_inputs(source, samples.artifact)
    clean, _ = read_inputs(source, samples.clean)
    return from_inputs(model, artifact, clean, layer, **options)


def store_model_and_source(store, model=None, source=None):
    """(model, source): the ones given, else those the store's run recorded (its --model spec and DATA spec).

    Args:
        store: The path of a ``relprop run`` store with SpRAy results.
        model: The model; None: the one the store's run recorded.
        source: The data set (a relprop.datasets Source, or a data spec); None: the store's own.

    Returns:
        A pair (model, source).

    Raises:
        ValueError: when the store was made with a Python model or data set and none is given, or the data set's
            length differs.
    """
    from ..datasets.sources import recorded_model_and_source
    from ..datasets.store import open_store

    model, source, _ = recorded_model_and_source(open_store(store).attrs, store, model, source)
    return model, source


__all__ = ["CAV", "from_activations", "from_inputs", "from_ids", "from_spray", "from_concept", "cluster_samples",
           "activations",
           "layer_module", "read_inputs", "to_features", "store_model_and_source", "POOLINGS", "KINDS"]
