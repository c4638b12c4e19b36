"""Comparing explanation methods on the same data in one go: one table, curves, a ranking and an HTML report.

``benchmark(model, data, methods, metrics)`` streams over ``data`` batch by batch. Per batch the model's output
on the clean inputs is computed once (one Runner, shared by every method and metric), each method explains the
batch once (its relevance is shared by every metric), and only per-sample scores and running sums of curves are
kept, so memory does not grow with the data set.

``data`` is any of:
- an iterable of batches (a DataLoader): each batch a tuple ``(x, label)`` or ``(x, label, mask)``, or a dict with
  keys ``x`` (or ``input``/``image``), ``label``, ``mask``, ``id``;
- a tuple of tensors ``(x, label[, mask])`` for the whole set, cut into batches of ``batch_size``;
- an object with ``batches(batch_size)`` yielding ``Batch`` objects. That is the hook for an explanation store of
  ``relprop run``: a Batch may carry the relevance of some methods already (``relevance={method: tensor}``), which
  is then used instead of explaining again.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import axiomatic, faithfulness, localisation, randomisation, robustness
from .complexity import complexity as entropy, effective_complexity, sparseness  # the package re-exports complexity()
from .methods import explainer
from .runner import Runner


@dataclass
class Batch:
    """One batch of data for benchmark(): inputs with what is known about them.

    Attributes:
        x: The inputs, samples first.
        label: (n,) int64 classes, -1 where unknown.
        mask: (n, *locations) booleans: the ground truth of the localisation metrics.
        ids: A name per sample.
        relevance: Method label -> (n, *x.shape[1:]) relevance computed elsewhere (a store), used instead of
            explaining again.
    """
    x: torch.Tensor
    label: torch.Tensor | None = None  # (n,) int64, -1 where unknown
    mask: torch.Tensor | None = None  # (n, *locations) bool ground truth
    ids: list | None = None
    relevance: dict = field(default_factory=dict)  # method -> (n, *x.shape[1:]) relevance computed elsewhere


@dataclass
class Context:
    """What a metric sees for one batch and one method."""

    model: torch.nn.Module
    runner: Runner
    batch: Batch
    relevance: torch.Tensor
    explain: Callable
    batch_size: int
    options: dict
    explanation: object = None  # what the method returned (an Explanation carries delta for completeness)
    cache: dict = field(default_factory=dict)  # results metrics of this batch and method share (randomisation)
    explained: bool = True  # relevance is the method's output on this batch here (False: read from a store)

    def masks(self, metric):
        if self.batch.mask is None:
            raise ValueError(f"metric {metric} needs ground-truth masks, and this data has none; give batches with "
                             "masks (x, label, mask) or leave out the localisation metrics")
        return self.batch.mask


def _local(function, **fixed):
    return lambda c, name: function(c.batch.x, c.relevance, c.masks(name), **{**fixed, **c.options.get(name, {})})


def _perturbing(function, **fixed):
    return lambda c, name: function(c.runner, c.batch.x, c.relevance, batch_size=c.batch_size,
                                    **{**fixed, **c.options.get(name, {})})


def _re_explaining(function, **fixed):
    return lambda c, name: function(c.model, c.batch.x, c.runner.target, c.explain, batch_size=c.batch_size,
                                    **{**fixed, **c.options.get(name, {})})


def _plain(function, **fixed):
    return lambda c, name: function(c.batch.x, c.relevance, **{**fixed, **c.options.get(name, {})})


# name -> how to compute it from a Context; options per metric come from benchmark(options={name: {...}})
METRICS = {
    "relevance_mass_accuracy": _local(localisation.relevance_mass_accuracy),
    "relevance_rank_accuracy": _local(localisation.relevance_rank_accuracy),
    "pointing_game": _local(localisation.pointing_game),
    "attribution_localisation": _local(localisation.attribution_localisation),
    "top_k_intersection": _local(localisation.top_k_intersection, k=100),
    "auc": _local(localisation.auc),
    "aopc": _perturbing(faithfulness.region_perturbation, order="morf"),
    "aopc_lerf": _perturbing(faithfulness.region_perturbation, order="lerf"),
    "pixel_flipping": _perturbing(faithfulness.pixel_flipping),
    "selectivity": _perturbing(faithfulness.selectivity),
    "faithfulness_correlation": _perturbing(faithfulness.faithfulness_correlation),
    "faithfulness_estimate": _perturbing(faithfulness.faithfulness_estimate),
    "monotonicity": _perturbing(faithfulness.monotonicity),
    "sensitivity_n": _perturbing(faithfulness.sensitivity_n),
    "irof": _perturbing(faithfulness.irof),
    "road": _perturbing(faithfulness.road),
    "infidelity": _perturbing(faithfulness.infidelity),
    "sufficiency": lambda c, name: faithfulness.sufficiency(c.runner, c.batch.x, c.relevance,
                                                            **c.options.get(name, {})),
    "completeness": lambda c, name: axiomatic.completeness(c.runner, c.batch.x, c.explanation,
                                                           **c.options.get(name, {})),
    "non_sensitivity": _perturbing(axiomatic.non_sensitivity),
    "input_invariance": lambda c, name: axiomatic.input_invariance(c.model, c.batch.x, c.runner.target, c.explain,
                                                                   **c.options.get(name, {})),
    "randomisation": lambda c, name: _cascade(c, name),
    "randomisation_last": lambda c, name: _last_layer(_cascade(c, name)),
    "randomisation_independent": _re_explaining(randomisation.model_parameter_randomisation, mode="independent"),
    "random_logit": _re_explaining(randomisation.random_logit),
    "max_sensitivity": _re_explaining(robustness.max_sensitivity, nr_samples=10),
    "avg_sensitivity": _re_explaining(robustness.avg_sensitivity, nr_samples=10),
    "local_lipschitz_estimate": _re_explaining(robustness.local_lipschitz_estimate, nr_samples=10),
    "sparseness": _plain(sparseness),
    "complexity": _plain(entropy),
    "effective_complexity": _plain(effective_complexity),
}


def _one_patch_per_step(options: dict) -> bool:
    """Whether a region metric with these options removes one patch per step (a chain of incremental passes)."""
    return options.get("patch_size", 8) != 1 and options.get("regions_per_step", 1) == 1 and \
        options.get("max_steps") is None


def _cascade(c: Context, name: str):
    """MPRT (cascading) for this batch and method, computed once for both randomisation metrics."""
    options = c.options.get(name, {})
    key = ("randomisation", repr(sorted(options.items())))
    if key not in c.cache:
        original = c.relevance if c.explained else None  # the cascade's first map: this method's relevance
        c.cache[key] = randomisation.model_parameter_randomisation(c.model, c.batch.x, c.runner.target, c.explain,
                                                                   batch_size=c.batch_size, original=original,
                                                                   **options)
    return c.cache[key]


def _last_layer(result):
    """MPRT's similarity once every layer is randomised (the end of the cascade), as its own score."""
    return replace(result, metric=result.metric + "_last", scores=result.details["per_layer"][:, -1])


def batches(data, batch_size: int):
    """Batch objects from any of the data forms the module docstring lists."""
    if hasattr(data, "batches"):
        yield from data.batches(batch_size)
        return
    if isinstance(data, tuple) and data and isinstance(data[0], torch.Tensor):
        yield from TensorBatches(data).batches(batch_size)
        return
    for item in data:
        yield _batch(item)


class Numbered:
    """batches() from batch(index, batch_size) over len(self) samples; batch() may give None (nothing readable)."""

    def batch_count(self, batch_size: int) -> int:
        """How many batches of batch_size the samples make.

        Args:
            batch_size: Samples per batch.

        Returns:
            The count.
        """
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int):
        """The batches in order, leaving out any that has nothing readable.

        Args:
            batch_size: Samples per batch.

        Yields:
            benchmark.Batch objects.
        """
        for index in range(self.batch_count(batch_size)):
            batch = self.batch(index, batch_size)
            if batch is not None:
                yield batch


class TensorBatches(Numbered):
    """A tuple of tensors (x, label[, mask]) for the whole set, read by batch number."""

    def __init__(self, parts: tuple):
        self.parts = parts

    def __len__(self):
        return len(self.parts[0])

    def batch(self, index: int, batch_size: int) -> Batch:
        start = index * batch_size
        return _batch(tuple(part[start:start + batch_size] if part is not None else None for part in self.parts))


def _batch(item) -> Batch:
    if isinstance(item, Batch):
        return item
    if isinstance(item, dict):
        x = next((item[k] for k in ("x", "input", "image", "images") if k in item), None)
        if x is None:
            raise ValueError(f"a batch dict needs the inputs under 'x' (or 'input', 'image'); it has {list(item)}")
        return Batch(x, _labels(item.get("label", item.get("labels"))), _mask(item.get("mask", item.get("masks"))),
                     item.get("id"))
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        parts = list(item) + [None] * (3 - len(item))
        return Batch(parts[0], _labels(parts[1]), _mask(parts[2]))
    raise TypeError(f"cannot read a batch from {type(item).__name__}; give (x, label[, mask]) tuples, dicts or Batch")


def _labels(labels):
    return None if labels is None else torch.as_tensor(labels).long()


def _mask(mask):
    return None if mask is None else torch.as_tensor(mask).bool()


@dataclass
class Plan:
    """What benchmark() computes on each batch; small and picklable, so Ray actors receive it."""

    methods: dict  # label -> method name or callable(model, x, target)
    metrics: list
    target: str
    batch_size: int
    options: dict
    method_options: dict

    def explainers(self) -> dict:
        return {label: explainer(spec, **self.method_options.get(label, {})) for label, spec in self.methods.items()}

    def evaluate(self, model, explainers: dict, batch: Batch, device=None, skip=(), on_pair=None) -> dict:
        """(method, metric) -> Result, or the message of why it could not be computed, for one batch.

        on_pair(method, metric, seconds): called after each pair (``None`` seconds: before it starts)."""
        import time

        if device is not None:
            batch.x = batch.x.to(device)
            batch.mask = None if batch.mask is None else batch.mask.to(device)
        chains = any(metric == "irof" or metric in ("aopc", "aopc_lerf", "selectivity") and _one_patch_per_step(
            self.options.get(metric, {})) for metric in self.metrics)
        runner = Runner(model, batch.x, "predicted", batch_size=self.batch_size, chains=chains)
        if self.target == "label" and batch.label is not None:
            labels = batch.label.to(runner.target.device)
            runner.target = torch.where(labels >= 0, labels, runner.target)
            runner.clean = runner.pick(runner.output, runner.target)
        outcomes = {}
        for label, explain in explainers.items():
            if label in batch.relevance:
                relevance = batch.relevance[label].to(batch.x)
                explanation = relevance
            else:
                explanation = explain(model, batch.x, runner.target)
                relevance = getattr(explanation, "relevance", explanation).detach()
            context = Context(model, runner, batch, relevance, explain, self.batch_size, self.options, explanation,
                              explained=label not in batch.relevance)
            for metric in self.metrics:
                if (label, metric) in skip:
                    continue
                if on_pair is not None:
                    on_pair(label, metric, None)
                start = time.perf_counter()
                try:
                    outcomes[label, metric] = METRICS[metric](context, metric)
                except (ValueError, TypeError, ImportError) as error:  # e.g. no masks, a method without delta
                    outcomes[label, metric] = " ".join(str(error).split())
                if on_pair is not None:
                    on_pair(label, metric, time.perf_counter() - start)
        return outcomes


def _merge(outcomes: dict, accumulators: dict, errors: dict) -> None:
    """One batch's outcomes into the accumulators; a pair that failed once stays failed (and keeps earlier scores)."""
    for key, outcome in outcomes.items():
        if key in errors:
            continue
        if isinstance(outcome, str):
            errors[key] = outcome
        else:
            accumulators[key].add(outcome)


class _Accumulator:
    """Per-sample scores and running curve sums of one (method, metric) pair."""

    def __init__(self):
        self.scores, self.curve_sums, self.curve_counts, self.higher_is_better = [], {}, {}, True

    def add(self, result):
        self.scores.append(result.scores.detach().double().cpu())
        self.higher_is_better = result.higher_is_better
        for name, curve in result.curves.items():
            curve = curve.detach().double().cpu()
            if name in self.curve_sums and self.curve_sums[name].shape[0] != curve.shape[1]:
                continue  # curves of other lengths (IROF's superpixel counts) are not averaged point by point
            self.curve_sums[name] = self.curve_sums.get(name, 0) + torch.nan_to_num(curve).sum(0)
            self.curve_counts[name] = self.curve_counts.get(name, 0) + curve.shape[0]


@dataclass
class BenchmarkResult:
    """What benchmark() returns: per-sample scores and mean curves of every method by every metric.

    Attributes:
        methods: The method labels, in the order given.
        metrics: The metric names.
        scores: (method, metric) -> (N,) per-sample scores.
        curves: (method, metric) -> {curve name: mean curve}.
        higher_is_better: Metric -> whether a higher score is better.
        errors: (method, metric) -> message, where a metric could not be computed.
        seconds: Metric -> seconds spent on it over all methods (local engine).
    """
    methods: list
    metrics: list
    scores: dict  # (method, metric) -> (N,) per-sample scores
    curves: dict  # (method, metric) -> {curve name: mean curve}
    higher_is_better: dict  # metric -> bool
    errors: dict  # (method, metric) -> message, where a metric could not be computed
    seconds: dict = field(default_factory=dict)  # metric -> seconds spent on it, all methods (local engine)

    def table(self):
        """A pandas DataFrame of mean scores: one row per method, one column per metric."""
        import pandas

        rows = {method: {metric: _mean(self.scores.get((method, metric))) for metric in self.metrics}
                for method in self.methods}
        frame = pandas.DataFrame.from_dict(rows, orient="index")[self.metrics]
        frame.index.name = "method"
        return frame

    def ranking(self):
        """Rank of each method per metric (1 best, by each metric's direction) and the mean rank, sorted by it."""
        table = self.table()
        ranks = table.copy()
        for metric in self.metrics:
            ranks[metric] = table[metric].rank(ascending=not self.higher_is_better.get(metric, True),
                                               method="min", na_option="bottom")
        ranks["mean rank"] = ranks[self.metrics].mean(axis=1)
        return ranks.sort_values("mean rank")

    def markdown(self, digits: int = 3) -> str:
        """The table as Markdown, methods in ranking order, each metric's direction in its header.

        Args:
            digits: Significant digits per cell.

        Returns:
            The Markdown table.
        """
        table, ranking = self.table(), self.ranking()
        header = ["method"] + [f"{m} {'↑' if self.higher_is_better.get(m, True) else '↓'}" for m in self.metrics]
        lines = ["| " + " | ".join(header + ["mean rank"]) + " |", "|" + "---|" * (len(header) + 1)]
        for method in ranking.index:
            cells = [method] + [_cell(table.loc[method, m], digits) for m in self.metrics]
            lines.append("| " + " | ".join(cells + [f"{ranking.loc[method, 'mean rank']:.1f}"]) + " |")
        return "\n".join(lines)

    def save(self, folder) -> None:
        """scores.csv (per sample), table.csv, ranking.csv, table.md and report.html (curves and ranking).

        Args:
            folder: Where the files go (created if missing).
        """
        import pandas
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"method": method, "metric": metric, "sample": i, "score": float(v)}
                for (method, metric), values in self.scores.items() for i, v in enumerate(values.tolist())]
        pandas.DataFrame(rows).to_csv(folder / "scores.csv", index=False)
        self.table().to_csv(folder / "table.csv")
        self.ranking().to_csv(folder / "ranking.csv")
        (folder / "table.md").write_text(self.markdown() + "\n")
        (folder / "report.html").write_text(self.html())

    def html(self) -> str:
        """A self-contained HTML page: the table, the ranking, the curves (PNG, inline) and any errors."""
        return "\n".join(["<!doctype html><meta charset='utf-8'><title>relprop evaluation</title>",
                          "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                          "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>",
                          "<h1>Evaluating explanations</h1>"] + self._sections())

    def _repr_html_(self) -> str:
        """What a notebook shows: the page's tables, curves and errors, without the page around them."""
        return "<div>" + "\n".join(self._sections()) + "</div>"

    def _sections(self) -> list:
        parts = ["<h2>Mean scores</h2>", "<p>↑: higher is better, ↓: lower is better.</p>",
                 self._html_table(self.table(), "{:.4g}"), "<h2>Ranking (1 is best)</h2>",
                 self._html_table(self.ranking(), "{:.3g}")]
        for metric in self.metrics:
            figure = self._curve_figure(metric)
            if figure is not None:
                parts.append(f"<h2>{html.escape(metric)}: curves</h2><img src='data:image/png;base64,{figure}'>")
        if self.errors:
            parts.append("<h2>Not computed</h2><ul>" + "".join(
                f"<li>{html.escape(m)} / {html.escape(k)}: {html.escape(e)}</li>"
                for (m, k), e in self.errors.items()) + "</ul>")
        return parts

    def _html_table(self, frame, number: str) -> str:
        """A frame as one HTML table with a single header row: method, then each column (metrics with ↑/↓)."""
        def head(column):
            if column not in self.metrics:
                return html.escape(str(column))
            return f"{html.escape(column)} {'↑' if self.higher_is_better.get(column, True) else '↓'}"

        rows = ["<tr><th>method</th>" + "".join(f"<th>{head(c)}</th>" for c in frame.columns) + "</tr>"]
        for method, values in frame.iterrows():
            cells = "".join(f"<td>{'-' if v != v else number.format(v)}</td>" for v in values.tolist())
            rows.append(f"<tr><th>{html.escape(str(method))}</th>{cells}</tr>")
        return "<table>" + "".join(rows) + "</table>"

    def _curve_figure(self, metric):
        curves = {method: self.curves.get((method, metric), {}) for method in self.methods}
        if not any(curves.values()):
            return None
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        for method, named in curves.items():
            for name, curve in named.items():
                steps = torch.linspace(0, 1, len(curve))
                axes.plot(steps.numpy(), curve.numpy(), label=f"{method} ({name})" if len(named) > 1 else method)
        axes.set_xlabel("fraction removed")
        axes.set_ylabel("mean score")
        axes.legend(fontsize=7)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        return base64.b64encode(buffer.getvalue()).decode()


def _mean(values):
    if values is None:
        return math.nan
    valid = values[~torch.isnan(values)]
    return valid.mean().item() if valid.numel() else math.nan


def _cell(value, digits):
    return "-" if value != value else f"{value:.{digits}f}"


class _ProgressLines:
    """Progress as plain lines: which method and metric runs (its number of all, where known), then its seconds."""

    def __init__(self, total, stream):
        self.total, self.stream, self.done = total, stream, 0

    def start(self, method, metric):
        of = "" if self.total is None else f" of {self.total}"
        print(f"relprop: evaluating {method} / {metric} ({self.done + 1}{of})", file=self.stream, flush=True)

    def batch(self, pairs):
        self.done += pairs
        of = "" if self.total is None else f" of {self.total}"
        print(f"relprop: a batch is done ({self.done}{of} method-metric pairs)", file=self.stream, flush=True)

    def end(self, method, metric, seconds):
        self.done += 1
        print(f"relprop: {method} / {metric} took {seconds:.1f} s", file=self.stream, flush=True)


def benchmark(model, data, methods, metrics=("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game",
                                             "aopc", "randomisation"),
              *, target="label", batch_size: int = 32, options: dict | None = None, method_options: dict | None = None,
              progress: bool = False, device=None, engine: str = "local", workers: int | None = None,
              address: str | None = None) -> BenchmarkResult:
    """Evaluate every method by every metric on data, streaming batch by batch (see the module docstring).

    Args:
        model: The classifier, or a model spec as ``relprop run`` takes it (loaded once).
        data: An iterable of batches, a tuple of tensors (x, label[, mask]), or an object with
            ``batches(batch_size)`` (DemoImages, ImageFiles, StoreBatches): see the module docstring.
        methods: Names (composites or attribution methods), or a dict label -> name or callable(model, x, target).
        metrics: Metric names (see METRICS).
        target: "label" (the data's labels; the predicted class where unknown) or "predicted".
        batch_size: Samples per batch.
        options: Metric name -> keyword arguments for it.
        method_options: Method label -> keyword arguments for it.
        progress: Show a progress bar on stderr.
        device: Where batches are moved before they are explained (None: where they are).
        engine: "local", or "ray": batches are spread over Ray actors as ``relprop run`` spreads chunks, with the
            same results.
        workers: How many Ray actors (engine "ray").
        address: The Ray cluster's address; None starts a local Ray.

    Returns:
        A BenchmarkResult (``.table()``, ``.ranking()``, ``.markdown()``, ``.save(folder)``).

    Raises:
        ValueError: for an unknown metric, target or engine.
    """
    if isinstance(methods, str):
        methods = [methods]
    methods = dict(methods) if isinstance(methods, dict) else {str(m): m for m in methods}
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    plan = Plan(methods, metrics, target, batch_size, options or {}, method_options or {})
    accumulators = {(m, k): _Accumulator() for m in methods for k in metrics}
    errors = {}
    seconds = {}
    bar = lines = None
    count = data.batch_count(batch_size) if hasattr(data, "batch_count") else None
    total = None if count is None else count * len(methods) * len(metrics)
    if progress:
        import sys

        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, unit="metric", file=sys.stderr, leave=False)
        else:  # a log or a pipe: one line as each pair starts and ends, so a long metric is never silent
            lines = _ProgressLines(total, sys.stderr)

    def on_pair(label, metric, elapsed):
        if elapsed is None:
            if bar is not None:
                bar.set_description(f"{label} / {metric}", refresh=True)
            if lines is not None:
                lines.start(label, metric)
            return
        seconds[metric] = seconds.get(metric, 0.0) + elapsed
        if bar is not None:
            bar.update(1)
        if lines is not None:
            lines.end(label, metric, elapsed)

    if engine == "ray":
        from .sharded import evaluate_on_ray

        pairs = len(methods) * len(metrics)

        def batch_done():
            if bar is not None:
                bar.update(pairs)
            if lines is not None:
                lines.batch(pairs)

        data = TensorBatches(data) if isinstance(data, tuple) else data
        for outcomes in evaluate_on_ray(model, data, plan, workers, address, batch_done):
            _merge(outcomes, accumulators, errors)
    else:
        model = model.load() if hasattr(model, "load") else model  # a model spec, as relprop run takes
        explainers = plan.explainers()
        for batch in batches(data, batch_size):
            _merge(plan.evaluate(model, explainers, batch, device, skip=errors, on_pair=on_pair), accumulators,
                   errors)
    if bar is not None:
        bar.close()
    scores = {key: torch.cat(acc.scores) for key, acc in accumulators.items() if acc.scores}
    curves = {key: {name: total / acc.curve_counts[name] for name, total in acc.curve_sums.items()}
              for key, acc in accumulators.items()}
    directions = {}
    for (label, metric), acc in accumulators.items():
        if acc.scores:
            directions[metric] = acc.higher_is_better
    return BenchmarkResult(list(methods), metrics, scores, curves, directions, errors, seconds)
