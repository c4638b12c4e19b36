"""Several composites on the same inputs, side by side: one batched LRP call per composite, one row per sample."""
from __future__ import annotations

import torch

from . import composites as composites_module
from .explanation import Explanation
from .lrp import LRP

COLUMNS = ("composite", "sample", "target", "class", "explained", "relevance_sum", "residual", "top")


class Comparison:
    """Rows (dicts) of composite, sample, target, class, explained output, relevance sum, residual, top features
    and, for table rows, each feature's relevance under its name; ``explanations`` holds the full results."""

    def __init__(self, rows: list[dict], explanations: dict[str, Explanation]):
        self.rows = rows
        self.explanations = explanations

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def to_dataframe(self):
        """A pandas DataFrame with one row per (composite, sample)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Comparison.to_dataframe needs pandas, which relprop does not install: "
                              "pip install pandas") from None
        return pandas.DataFrame(self.rows)

    def __str__(self):
        header = ("composite", "sample", "target", "explained", "relevance sum", "residual", "top features")
        lines = [[row["composite"], str(row["sample"]), str(row["target"]), f"{row['explained']:.4g}",
                  f"{row['relevance_sum']:.4g}", f"{row['residual']:.3g}",
                  ", ".join(f"{name} {value:+.3g}" for name, value in row["top"])] for row in self.rows]
        widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
        text = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
        return "\n".join(text)

    def __repr__(self):
        return f"Comparison({len(self.explanations)} composites, {len(self.rows)} rows)"


def _labelled(composites) -> dict:
    if isinstance(composites, (str, composites_module.Composite)):
        composites = [composites]
    if isinstance(composites, dict):
        return dict(composites)
    labelled = {}
    for composite in composites:
        label = composite if isinstance(composite, str) else type(composite).__name__
        while label in labelled:
            label += "'"
        labelled[label] = composite
    return labelled


def compare(model: torch.nn.Module, x: torch.Tensor, composites=None, target=None, feature_names=None, k: int = 5,
            canonizers="auto", absolute: bool = False, class_names=None) -> Comparison:
    """Explain x with each composite (names, Composite objects, or a dict label -> composite; default: all
    registered but the other libraries' presets, and for models whose first linear-like layer is dense not those
    whose first-layer rule ignores the input's values: flat and z^B belong to images) and tabulate the results; k is how many top features each row
    lists (by |relevance| if absolute); class_names name the explained class in each row's "class"."""
    done = {}
    if composites is None:
        # The default composite tells what the first linear-like layer run is, and is one of the composites listed.
        auto = composites_module.get("auto")
        first = LRP(model, auto, canonizers=canonizers, feature_names=feature_names,
                    class_names=class_names)(x, target)
        done[first.composite["name"]] = first
        composites = [name for name in composites_module.names() if name not in composites_module.PRESETS and (
            auto.chosen == "conv" or composites_module.suits_dense_input(composites_module.get(name)))]
    labelled = _labelled(composites)
    if not labelled:
        raise ValueError("compare needs at least one composite")
    explanations = {}
    for label, composite in labelled.items():
        if label not in done:
            done[label] = LRP(model, composite, canonizers=canonizers, feature_names=feature_names,
                              class_names=class_names)(x, target)
        explanations[label] = done[label]
    rows = []
    for label, explanation in explanations.items():
        labels = explanation.feature_labels()  # also checks feature_names against the input's shape
        tabular = explanation.relevance.dim() == 2
        for sample, (top, one) in enumerate(zip(explanation.top(k, absolute), explanation)):
            names = one.target_names
            row = {"composite": label, "sample": sample,
                   "target": None if one.target is None else one.target[0].tolist(),
                   "class": None if names is None else names[0],
                   "explained": float(one.explained[0]), "relevance_sum": float(one.relevance_sum[0]),
                   "residual": float(one.delta[0]), "top": top}
            if tabular:
                for name, value in zip(labels, one.relevance[0].tolist()):
                    row[name if name not in COLUMNS else f"relevance[{name}]"] = value
            rows.append(row)
    return Comparison(rows, explanations)
