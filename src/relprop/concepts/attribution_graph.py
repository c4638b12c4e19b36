"""The attribution graph: how much of a higher concept's relevance comes from each lower concept.

For channel c of an upper layer U and channel j of a lower layer L, the edge weight is R_{j|c}, the relevance at
L's channel j (summed over positions) of the conditional backward through c alone. Over all j it adds up to what c
passed down (less what L's layers above absorb); over all c that a cut layer U has, it is L's plain relevance.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from ..attribution.lrp import LRP
from .conditional import Run, channel_dim, check_layer, parse
from .relevance import channel_sums, concept_relevance

POSITIVE, NEGATIVE = "#d62728", "#1f77b4"  # as relprop.viz: red for the target, blue against


@dataclass
class Graph:
    """An attribution graph: how much of each upper concept's relevance each lower concept gives.

    Attributes:
        upper: The upper layer's name.
        lower: The lower layer's name.
        upper_channels: (U,) the upper channels.
        upper_relevance: Their relevance.
        table: (U, lower channels): R_{j|c}, the relevance of lower channel j that flows through upper channel c.
        top: (U, k) the top lower channels of each upper one.
    """

    upper: str
    lower: str
    upper_channels: list
    upper_relevance: torch.Tensor
    table: torch.Tensor
    top: torch.Tensor

    def rows(self) -> list[dict]:
        """The graph's edges as table rows: upper channel, lower channel, relevance, share of the upper's."""
        rows = []
        for position, channel in enumerate(self.upper_channels):
            total = float(self.upper_relevance[position])
            for lower in self.top[position].tolist():
                value = float(self.table[position, lower])
                rows.append({"upper": channel, "lower": lower, "relevance": value,
                             "share": value / total if total else float("nan")})
        return rows

    def svg(self, width: int = 640) -> str:
        """The graph as an SVG picture: upper concepts on top, their top lower concepts below, edge width ~ |R|.

        Args:
            width: The picture's width in pixels.

        Returns:
            The SVG markup.
        """
        lowers = list(dict.fromkeys(j for row in self.top.tolist() for j in row))
        span = max(float(self.table.abs().max()), 1e-30)
        def x_of(index, count):
            return (index + 0.5) * width / count
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="220" font-family="sans-serif" '
                 'font-size="11">']
        for position, channel in enumerate(self.upper_channels):
            for lower in self.top[position].tolist():
                value = float(self.table[position, lower])
                parts.append(f'<line x1="{x_of(position, len(self.upper_channels)):.1f}" y1="40" '
                             f'x2="{x_of(lowers.index(lower), len(lowers)):.1f}" y2="180" stroke="'
                             f'{POSITIVE if value >= 0 else NEGATIVE}" stroke-width="{0.5 + 6 * abs(value) / span:.2f}"'
                             f' stroke-opacity="0.7"><title>{channel} &lt;- {lower}: {value:.4g}</title></line>')
        for row, (names, y) in enumerate(((self.upper_channels, 40), (lowers, 180))):
            layer = html.escape(self.upper if row == 0 else self.lower)
            for index, channel in enumerate(names):
                cx = x_of(index, len(names))
                parts.append(f'<circle cx="{cx:.1f}" cy="{y}" r="12" fill="white" stroke="black"/>'
                             f'<text x="{cx:.1f}" y="{y + 4}" text-anchor="middle">{channel}</text>')
            parts.append(f'<text x="4" y="{y - 18 if row == 0 else y + 30}">{layer}</text>')
        parts.append("</svg>")
        return "".join(parts)


def attribution_graph(lrp: LRP, x: torch.Tensor, target=None, upper: str = "", lower: str = "", channels=None,
                      top: int = 5) -> Graph:
    """For one sample, the relevance of every channel of lower that flows through each chosen channel of upper.

    Args:
        lrp: The LRP explainer (relprop.LRP) of the model; its composite gives the rules.
        x: One sample, as a batch of one.
        target: The class explained, as LRP takes it (None: the predicted class).
        upper: The upper layer's name.
        lower: The lower layer's name (it runs before upper).
        channels: The upper channels; None: upper's top concepts.
        top: How many upper concepts (when channels is None) and lower channels per upper one are kept.

    Returns:
        A Graph.

    Raises:
        ValueError: for a batch of more than one sample, or a lower layer that runs after upper.
    """
    if len(x) != 1:
        raise ValueError(f"an attribution graph explains one sample; got a batch of {len(x)} (pass x[i:i + 1])")
    if channels is None:
        sums = concept_relevance(lrp, x, target, [upper])[upper][0]
        channels = sums.topk(min(top, len(sums))).indices.tolist()
    channels = [int(c) for c in channels]
    conditions = [parse({upper: [c]}, lrp.model, target) for c in channels]
    check_layer(dict(lrp.model.named_modules()), lower)
    run = Run(lrp, x, [upper, lower])
    try:
        path = run.order(conditions[0][1])
        if run.order(((upper, None), (lower, None)))[0] != upper:
            raise ValueError(f"layer {lower!r} runs after {upper!r}; the lower layer comes first in the forward pass")
        relevance, passed = run.layer_relevance(conditions, path, lower)
    finally:
        run.close()
    relevance = relevance[:, 0]  # (upper channel, *the layer's shape without its batch of one)
    table = channel_sums(relevance, channel_dim(run.module(lower), relevance))
    order = table.topk(min(top, table.shape[1]), dim=1).indices
    return Graph(upper, lower, channels, passed[:, 0], table, order)
