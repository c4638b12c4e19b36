"""Several composites on the same inputs, side by side: one batched LRP call per composite, one row per sample.

Composites that give the same relevance on the model at hand (on a dense model z+ and alpha-beta, which act on
convolutions, leave every composite epsilon) are listed once, with the others named as coinciding.
"""
from __future__ import annotations

import torch

from . import composites as composites_module
from .explanation import Explanation
from .attribution.lrp import LRP

COLUMNS = ("composite", "same_as", "sample", "target", "class", "explained", "relevance_sum", "residual", "top")
# Relevances closer than this, relative to a sample's largest |relevance|, print alike (the table shows 3-4 digits):
# their composites coincide. LRP-0 and epsilon=1e-6 differ by about 1e-5 of it in float32.
COINCIDE = 1e-4


class Comparison:
    """The results of compare(): one row per (composite, sample), and every composite's full Explanation.

    Args:
        rows: Dicts of composite, the composites coinciding with it (same_as), sample, target, class, explained
            output, relevance sum, residual, top features and, for table rows, each feature's relevance under its
            name.
        explanations: Composite label -> its Explanation.
        groups: The composites that coincide, each group a list of labels (default: each on its own).
    """

    def __init__(self, rows: list[dict], explanations: dict[str, Explanation], groups: list[list[str]] | None = None):
        self.rows = rows
        self.explanations = explanations
        self.groups = groups if groups is not None else [[label] for label in explanations]

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
        text += [f"{group[0]} stands for {', '.join(group[1:])}: relevance within {COINCIDE:g} of each sample's "
                 "largest on this model" for group in self.groups if len(group) > 1]
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
            canonizers="auto", absolute: bool = False, class_names=None, merge: bool = True) -> Comparison:
    """Explain x with each composite and tabulate the results.

    Composites whose relevance coincides on this model (within COINCIDE of each sample's largest) get one block of
    rows, the first given standing for the others (its rows' "same_as").

    Args:
        model: The model.
        x: The input batch.
        composites: Names, Composite objects, or a dict label -> composite; None: all registered but the other
            libraries' presets, and for models whose first linear-like layer is dense not those whose first-layer
            rule ignores the input's values (flat and z^B belong to images), the default's choice first.
        target: The target, as LRP takes it.
        feature_names: Names of the input's features.
        k: How many top features each row lists.
        canonizers: As LRP takes them.
        absolute: Rank top features by |relevance|.
        class_names: Names the explained class in each row's "class".
        merge: List coinciding composites once; False lists every composite.

    Returns:
        A Comparison (``.to_dataframe()``, ``str()`` for a table).
    """
    done = {}
    if composites is None:
        # The default composite tells what the first linear-like layer run is, and is one of the composites listed.
        auto = composites_module.get("auto")
        first = LRP(model, auto, canonizers=canonizers, feature_names=feature_names,
                    class_names=class_names)(x, target)
        done[first.composite["name"]] = first
        composites = [first.composite["name"]] + [
            name for name in composites_module.names() if name not in composites_module.PRESETS
            and name != first.composite["name"]
            and (auto.chosen == "conv" or composites_module.suits_dense_input(composites_module.get(name)))]
    labelled = _labelled(composites)
    if not labelled:
        raise ValueError("compare needs at least one composite")
    explanations = {}
    for label, composite in labelled.items():
        if label not in done:
            done[label] = LRP(model, composite, canonizers=canonizers, feature_names=feature_names,
                              class_names=class_names)(x, target)
        explanations[label] = done[label]
    groups = _coinciding(explanations) if merge else [[label] for label in explanations]
    rows = []
    for label, *same_as in groups:
        explanation = explanations[label]
        labels = explanation.feature_labels()  # also checks feature_names against the input's shape
        tabular = explanation.relevance.dim() == 2
        for sample, (top, one) in enumerate(zip(explanation.top(k, absolute), explanation)):
            names = one.target_names
            row = {"composite": label, "same_as": list(same_as), "sample": sample,
                   "target": None if one.target is None else one.target[0].tolist(),
                   "class": None if names is None else names[0],
                   "explained": float(one.explained[0]), "relevance_sum": float(one.relevance_sum[0]),
                   "residual": float(one.delta[0]), "top": top}
            if tabular:
                for name, value in zip(labels, one.relevance[0].tolist()):
                    row[name if name not in COLUMNS else f"relevance[{name}]"] = value
            rows.append(row)
    return Comparison(rows, explanations, groups)


def _coinciding(explanations: dict[str, Explanation]) -> list[list[str]]:
    """The labels in groups whose relevance coincides sample by sample, each group in the order given."""
    groups: list[list[str]] = []
    for label, explanation in explanations.items():
        for group in groups:
            if _same(explanations[group[0]], explanation):
                group.append(label)
                break
        else:
            groups.append([label])
    return groups


def _same(first: Explanation, second: Explanation) -> bool:
    """Whether two explanations of one batch print alike: each sample within COINCIDE of its largest |relevance|."""
    a, b = first.relevance.detach().flatten(1), second.relevance.detach().flatten(1)
    if a.shape != b.shape or not torch.allclose(first.explained, second.explained, rtol=COINCIDE, atol=0):
        return False
    scale = torch.maximum(a.abs().amax(1), b.abs().amax(1))
    return bool(((a - b).abs().amax(1) <= COINCIDE * scale).all())
