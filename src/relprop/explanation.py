"""What an explanation returns: relevance, the output it explains, and how well relevance was conserved."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Explanation:
    relevance: torch.Tensor  # shaped like the input
    output: torch.Tensor  # the model's output, detached
    explained: torch.Tensor  # per sample: the output relevance that was explained (e.g. the target logit)
    delta: torch.Tensor  # per sample: explained - relevance.sum(); what biases and stabilizers absorbed
    target: torch.Tensor | None = None  # the class index per sample, when the target was given as classes
    layers: dict = field(default_factory=dict)  # module name -> relevance at its output (see record=)
    explained_logits: bool = False  # True when a softmax at the output was skipped and the logits explained
    gradient: torch.Tensor | None = None  # the modified gradient at the input: relevance = input * gradient
    feature_names: list | None = None  # names of the input's last dimension (tabular data)

    @property
    def relevance_sum(self) -> torch.Tensor:
        return self.relevance.flatten(1).sum(1)

    def __repr__(self):
        return (f"Explanation(relevance={tuple(self.relevance.shape)}, output={tuple(self.output.shape)}, "
                f"explained={self.explained.tolist()}, delta={self.delta.tolist()})")


@dataclass
class Report:
    """Every op that ran while explaining, in order, with its rule and the relevance in and out of it."""

    rows: list
    explanation: Explanation

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def leaks(self, tolerance: float = 1e-3) -> list:
        """Rows whose relevance in differs from relevance out by more than tolerance (relative)."""
        return [row for row in self.rows if row.backward_seen
                and abs(row.relevance_in - row.relevance_out) > tolerance * max(1e-12, abs(row.relevance_out))]

    def __str__(self):
        header = ("#", "op", "module", "rule", "relevance out", "relevance in")
        lines = [[str(row.index), row.op.replace("torch.nn.functional.", "F.").replace("torch.Tensor.", "Tensor."),
                  row.module or "-", row.rule,
                  f"{row.relevance_out:.6g}" if row.backward_seen else "-",
                  f"{row.relevance_in:.6g}" if row.backward_seen else "-"] for row in self.rows]
        widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i])
                  for i in range(len(header))]
        text = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
        text.append(f"explained {self.explanation.explained.sum().item():.6g}, input relevance "
                    f"{self.explanation.relevance.sum().item():.6g}, residual {self.explanation.delta.sum().item():.6g}")
        return "\n".join(text)
