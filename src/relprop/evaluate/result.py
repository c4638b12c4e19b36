"""What a metric returns: one score per sample, the curves behind it where there are any, and a summary.

A value that needs a forward pass the metric's own numbers do not (pixel flipping's f(x), the start of its curve and
of its AOPC, where the relevance came without the model's output) can be given as ``Later(compute)``: it is computed
when first read, so a caller who reads only the perturbed scores (``details["perturbed"]``) makes no clean pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


class Later:
    """A Result's value computed when first read (then kept).

    Args:
        compute: Called once, without arguments, for the value.
    """

    def __init__(self, compute: Callable):
        self.compute = compute
        self.value, self.done = None, False

    def __call__(self):
        if not self.done:
            self.value, self.done = self.compute(), True
        return self.value


def _resolved(value):
    return value() if isinstance(value, Later) else value


class _Values(dict):
    """A dict whose Later values are computed when read (by key, get, items, values or copying)."""

    def __getitem__(self, key):
        value = _resolved(super().__getitem__(key))
        super().__setitem__(key, value)
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __iter__(self):  # defined so that dict(values) and {**values} read through __getitem__
        return super().__iter__()

    def items(self):
        return [(key, self[key]) for key in list(super().__iter__())]

    def values(self):
        return [self[key] for key in list(super().__iter__())]

    def copy(self):
        return dict(self.items())

    def __eq__(self, other):
        return dict(self.items()) == other

    __hash__ = None

    def __repr__(self):
        return repr(dict(self.items()))


@dataclass
class Result:
    """What a metric returns: one score per sample, the curves behind it where there are any, and a summary.

    Attributes:
        metric: The metric's name.
        scores: (N,) float64, one score per sample (NaN where a sample has no score).
        higher_is_better: The metric's direction.
        parameters: The settings the metric ran with.
        curves: Name -> (N, points) tensor, e.g. "morf": model scores per step.
        details: Name -> (N, ...) tensor, e.g. per-layer similarities.
    """
    metric: str
    scores: torch.Tensor  # (N,) float64, one score per sample (NaN where a sample has no score, with the reason)
    higher_is_better: bool
    parameters: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # name -> (N, points) tensor, e.g. "morf": model scores per step
    details: dict = field(default_factory=dict)  # name -> (N, ...) tensor, e.g. per-layer similarities

    def __post_init__(self):
        # a _Values given (another Result's) is shared as it is: wrapping it again would compute its Later values
        self.curves = self.curves if isinstance(self.curves, _Values) else _Values(self.curves)
        self.details = self.details if isinstance(self.details, _Values) else _Values(self.details)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if type(value) is Later:  # scores given as Later: computed on first read
            value = value()
            object.__setattr__(self, name, value)
        return value

    def __len__(self) -> int:
        return self.scores.shape[0]

    def summary(self) -> dict:
        """Mean, standard deviation, median, min and max of the per-sample scores (NaNs left out) and their count."""
        valid = self.scores[~torch.isnan(self.scores)].double()
        if valid.numel() == 0:
            return {"metric": self.metric, "mean": float("nan"), "std": float("nan"), "median": float("nan"),
                    "min": float("nan"), "max": float("nan"), "count": 0}
        return {"metric": self.metric, "mean": valid.mean().item(),
                "std": valid.std().item() if valid.numel() > 1 else 0.0, "median": valid.median().item(),
                "min": valid.min().item(), "max": valid.max().item(), "count": valid.numel()}

    @property
    def mean(self) -> float:
        """The mean score over samples, NaNs left out."""
        return self.summary()["mean"]

    def to_dataframe(self):
        """A pandas DataFrame: one row per sample with its score and any per-sample details that are scalars."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Result.to_dataframe needs pandas, which relprop does not install: pip install pandas") \
                from None
        columns = {"score": self.scores.double().cpu().numpy()}
        for name, value in self.details.items():
            if isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == len(self):
                columns[name] = value.double().cpu().numpy()
            elif isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[0] == len(self):
                for j in range(value.shape[1]):
                    columns[f"{name}[{j}]"] = value[:, j].double().cpu().numpy()
        frame = pandas.DataFrame(columns)
        frame.index.name = "sample"
        frame.insert(0, "metric", self.metric)
        return frame

    def _repr_html_(self) -> str:
        """What a notebook shows: the metric and its direction, the summary of the scores, the settings and curves."""
        from html import escape

        summary = self.summary()
        rows = [("metric", self.metric), ("better", "higher" if self.higher_is_better else "lower"),
                ("samples with a score", f"{summary['count']} of {len(self)}"),
                ("mean ± std", f"{summary['mean']:.4g} ± {summary['std']:.4g}"), ("median", f"{summary['median']:.4g}"),
                ("min … max", f"{summary['min']:.4g} … {summary['max']:.4g}")]
        rows += [(f"setting: {name}", repr(value)) for name, value in self.parameters.items()]
        rows += [(f"curve: {name}", f"{tuple(curve.shape)[0]} samples × {tuple(curve.shape)[-1]} points")
                 for name, curve in self.curves.items()]
        body = "".join(f"<tr><th style='text-align:left'>{escape(str(key))}</th><td style='text-align:left'>"
                       f"{escape(str(value))}</td></tr>" for key, value in rows)
        return f"<table>{body}</table>"

    def __repr__(self):
        summary = self.summary()
        better = "higher" if self.higher_is_better else "lower"
        return (f"Result({self.metric}: mean {summary['mean']:.4g} ± {summary['std']:.4g} over {summary['count']} "
                f"samples, {better} is better)")
