"""What an explanation returns: relevance, the output it explains, and how well relevance was conserved."""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch


NOTEBOOK_SAMPLES = 8  # samples an Explanation draws in a notebook
REPORT_COLUMNS = ("#", "op", "module", "rule", "relevance out", "relevance in")


def _png(picture: np.ndarray) -> str:
    """An RGB uint8 array as base64 PNG, for pages that must stand alone."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Explanation:
    """What an explainer returns: relevance, the output it explains, and how well relevance was conserved.
    Indexing (``explanation[i]``) gives some samples; in a notebook it shows itself as a table with heatmaps.

    Attributes:
        relevance: Relevance shaped like the input.
        output: The model's output, detached.
        explained: Per sample: the output relevance that was explained (e.g. the target logit).
        delta: Per sample: explained - relevance.sum(); what biases and stabilizers absorbed (NaN for methods that
            do not conserve).
        target: The class index per sample (per location for per-location outputs), or None when the target was not
            a class.
        layers: Module name -> relevance at its output (see record=).
        explained_logits: True when a softmax at the output was skipped and the logits explained.
        gradient: The (modified) gradient at the input: relevance = input * gradient.
        feature_names: Names of the input's last dimension (tabular data).
        composite: LRP: the composite used, {"name", "parameters"} (and "chosen" when by default).
        details: Method-specific extras, e.g. DeepLiftShap's delta_per_baseline.
        class_names: Names of the output's classes, for target_names.
    """
    relevance: torch.Tensor  # shaped like the input
    output: torch.Tensor  # the model's output, detached
    explained: torch.Tensor  # per sample: the output relevance that was explained (e.g. the target logit)
    delta: torch.Tensor  # per sample: explained - relevance.sum(); what biases and stabilizers absorbed
    target: torch.Tensor | None = None  # the class index per sample (per location for target=None on per-location
    # outputs such as segmentation maps), when the target was given as classes
    layers: dict = field(default_factory=dict)  # module name -> relevance at its output (see record=)
    explained_logits: bool = False  # True when a softmax at the output was skipped and the logits explained
    gradient: torch.Tensor | None = None  # the modified gradient at the input: relevance = input * gradient
    feature_names: list | None = None  # names of the input's last dimension (tabular data)
    composite: dict | None = None  # LRP: the composite used, {"name", "parameters"} (and "chosen" when by default)
    details: dict = field(default_factory=dict)  # method-specific extras, e.g. DeepLiftShap's delta_per_baseline
    class_names: list | None = None  # names of the output's classes, for target_names

    @property
    def target_names(self) -> list[str] | None:
        """Per sample, the name of the explained class (class_names[target]), or None without class targets."""
        if self.target is None or self.target.dim() != 1:  # no class targets, or a class per location
            return None
        targets = self.target.flatten().tolist()
        if self.class_names is None:
            return [f"class_{index}" for index in targets]
        if max(targets) >= len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names, but class {max(targets)} was explained; give "
                             "one name per output class")
        return [str(self.class_names[index]) for index in targets]

    @property
    def relevance_sum(self) -> torch.Tensor:
        """Per sample: the relevance summed over the input."""
        return self.relevance.flatten(1).sum(1)

    # ---- per sample: expl[i], expl[2:5], for sample in expl ---------------------------------------------------
    def __len__(self) -> int:
        return self.relevance.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index) -> Explanation:
        """The explanation of some samples; an int gives one sample, keeping the batch dimension (of size 1)."""
        count = len(self)
        if isinstance(index, bool):
            raise TypeError("index an Explanation with an int, a slice, a list of ints or a boolean mask")
        if isinstance(index, int):
            if not -count <= index < count:
                raise IndexError(f"sample {index} out of range for an explanation of {count} samples")
            index = slice(index % count, index % count + 1)
        elif isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.bool if index and isinstance(index[0], bool) else torch.long)
        elif not isinstance(index, (slice, torch.Tensor)):
            raise TypeError(f"index an Explanation with an int, a slice, a list of ints or a boolean mask, "
                            f"got {type(index).__name__}")

        def take(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == count:
                return value[index.to(value.device) if isinstance(index, torch.Tensor) else index]
            if isinstance(value, list):
                return [take(item) for item in value]
            return value

        return Explanation(take(self.relevance), take(self.output), take(self.explained), take(self.delta),
                           take(self.target), {name: take(value) for name, value in self.layers.items()},
                           self.explained_logits, take(self.gradient), self.feature_names, self.composite,
                           {name: take(value) for name, value in self.details.items()}, self.class_names)

    # ---- features: names, top-k, tables, charts ---------------------------------------------------------------
    def feature_labels(self, positions=None) -> list[str]:
        """A name for each entry of a flattened sample (or for the given flat positions): its feature name, with
        its position when the names cover the last dimension only (e.g. "ecg[12]"), else "x[0, 3, 4]".

        Args:
            positions: Flat positions to name; None: all.

        Returns:
            A list of names.
        """
        shape = tuple(self.relevance.shape[1:])
        size = math.prod(shape)
        positions = range(size) if positions is None else positions
        names = None if self.feature_names is None else [str(name) for name in self.feature_names]
        if names is not None and len(names) == size:
            return [names[j] for j in positions]
        if names is not None and not (shape and len(names) == shape[-1]):
            raise ValueError(f"{len(names)} feature names for samples shaped {shape}; give one name per feature "
                             f"({size}) or per entry of the last dimension ({shape[-1] if shape else 1})")
        labels = []
        for j in positions:
            where = [int(i) for i in np.unravel_index(j, shape)] if shape else []
            if names is None:
                labels.append(f"x[{', '.join(map(str, where))}]")
            else:
                labels.append(f"{names[where[-1]]}[{', '.join(map(str, where[:-1]))}]")
        return labels

    def top(self, k: int = 5, absolute: bool = False) -> list[list[tuple[str, float]]]:
        """Per sample, the k features of highest relevance (of highest |relevance| if absolute) as (name, value).

        Args:
            k: How many features per sample.
            absolute: Rank by |relevance|.

        Returns:
            Per sample, a list of (name, value).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        flat = self.relevance.detach().flatten(1).cpu()
        order = (flat.abs() if absolute else flat).argsort(dim=1, descending=True, stable=True)[:, :k]
        return [list(zip(self.feature_labels(picks.tolist()), row[picks].tolist())) for row, picks in zip(flat, order)]

    def to_dataframe(self):
        """A pandas DataFrame: one row per sample, one column per feature (see feature_labels)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Explanation.to_dataframe needs pandas, which relprop does not install: "
                              "pip install pandas") from None
        values = self.relevance.detach().flatten(1).cpu().double().numpy()
        frame = pandas.DataFrame(values, columns=self.feature_labels())
        frame.index.name = "sample"
        return frame

    def plot(self, sample: int = 0, kind: str = "auto", top: int | None = None, ax=None, **options):
        """Draw one sample's relevance and return the matplotlib Axes.

        Args:
            sample: The sample's index.
            kind: "auto" ("bar" for table rows: named features, or at most 64 values; "line" for longer 1-D signals,
                channels summed; "heatmap" for images), "bar", "line" or "heatmap".
            top: Bars: show only the top features by |relevance|.
            ax: The matplotlib Axes to draw into; None: a new figure.
            **options: Passed to the relprop.viz function that draws.

        Returns:
            The Axes.

        Raises:
            ValueError: for an unknown kind.
        """
        from . import viz

        relevance = self.relevance[sample].detach().cpu()
        if kind == "auto":
            if relevance.dim() >= 3:
                kind = "heatmap"
            elif self.feature_names is not None or relevance.numel() <= 64:
                kind = "bar"
            else:
                kind = "line"
        if kind == "bar":
            return viz.bars(relevance.flatten(), self.feature_labels(), top=top, ax=ax, **options)
        if kind == "line":
            return viz.line(relevance.reshape(-1, relevance.shape[-1]).sum(0) if relevance.dim() else relevance,
                            ax=ax, **options)
        if kind == "heatmap":
            if ax is None:
                from matplotlib.figure import Figure

                ax = Figure(figsize=(4, 4)).add_subplot()
            ax.imshow(viz.heatmap(relevance, **options)[0], interpolation="nearest")
            ax.set_axis_off()
            return ax
        raise ValueError(f"unknown kind {kind!r}; choose auto, bar, line or heatmap")

    def _repr_html_(self) -> str:
        """In a notebook: per sample the explained output, delta and target, with a heatmap for image relevance."""
        shown = min(len(self), NOTEBOOK_SAMPLES)
        pictures = [""] * shown
        if self.relevance.dim() in (3, 4) and min(self.relevance.shape[-2:]) > 1:  # (N, H, W) or (N, C, H, W)
            from .viz import heatmap

            pictures = [f'<img src="data:image/png;base64,{_png(picture)}" width="{max(64, picture.shape[1])}">'
                        for picture in heatmap(self.relevance[:shown].detach().float().cpu())]
        names = self.target_names
        rows = "".join(
            f"<tr><td>{index}</td><td>{html.escape(names[index]) if names else '-'}</td>"
            f"<td>{self.explained[index].item():.4g}</td><td>{self.delta[index].item():.3g}</td>"
            f"<td>{pictures[index]}</td></tr>" for index in range(shown))
        more = f"<p>{len(self) - shown} more samples not shown</p>" if len(self) > shown else ""
        composite = f" by {html.escape(self.composite['name'])}" if self.composite else ""
        return (f"<p>Explanation{composite} of {len(self)} samples, relevance shaped "
                f"{tuple(self.relevance.shape)}</p><table><tr><th>sample</th><th>target</th><th>explained</th>"
                f"<th>delta</th><th>relevance</th></tr>{rows}</table>{more}")

    def __repr__(self):
        composite = "" if self.composite is None else f", composite={self.composite['name']!r}"
        return (f"Explanation(relevance={tuple(self.relevance.shape)}, output={tuple(self.output.shape)}, "
                f"explained={self.explained.tolist()}, delta={self.delta.tolist()}{composite})")


@dataclass
class Report:
    """Every op that ran while explaining, in order, with its rule and the relevance in and out of it.

    Attributes:
        rows: One row per op: module, op, rule, relevance out of it and into its inputs.
        explanation: The Explanation of the same call.
    """

    rows: list
    explanation: Explanation

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def leaks(self, tolerance: float = 1e-3) -> list:
        """Rows whose relevance in differs from relevance out by more than tolerance (relative).

        Args:
            tolerance: The relative difference allowed.

        Returns:
            The leaking rows.
        """
        return [row for row in self.rows if row.backward_seen
                and abs(row.relevance_in - row.relevance_out) > tolerance * max(1e-12, abs(row.relevance_out))]

    def _repr_html_(self) -> str:
        """In a notebook: the same table as str(report), leaking rows marked."""
        leaking = {id(row) for row in self.leaks()}
        header = "".join(f"<th>{name}</th>" for name in REPORT_COLUMNS)
        marked = ' style="background:#fde0dd"'
        rows = "".join(
            f'<tr{marked if id(row) in leaking else ""}>'
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in self._cells(row)) + "</tr>" for row in self.rows)
        summary = html.escape(self._summary())
        return f"<table><tr>{header}</tr>{rows}</table><p>{summary}</p>"

    @staticmethod
    def _cells(row) -> list[str]:
        return [str(row.index), row.op.replace("torch.nn.functional.", "F.").replace("torch.Tensor.", "Tensor."),
                row.module or "-", row.rule,
                f"{row.relevance_out:.6g}" if row.backward_seen else "-",
                f"{row.relevance_in:.6g}" if row.backward_seen else "-"]

    def _summary(self) -> str:
        return (f"explained {self.explanation.explained.sum().item():.6g}, input relevance "
                f"{self.explanation.relevance.sum().item():.6g}, residual {self.explanation.delta.sum().item():.6g}")

    def __str__(self):
        header = REPORT_COLUMNS
        lines = [self._cells(row) for row in self.rows]
        widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i])
                  for i in range(len(header))]
        text = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
        text.append(self._summary())
        return "\n".join(text)
