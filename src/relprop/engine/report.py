"""The report and the records: which op ran where under which rule, and the relevance that crossed it.

A ``Row`` per op; the relevance into an op is summed by a ``Tap`` (an identity on each input), the relevance out of it
by a hook on its output. ``Recorded`` keeps the relevance at a module's output (``record=``). Nothing here runs
unless a report or a record was asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .facts import Facts


@dataclass
class Row:
    """One op in a report: where it ran, its rule, and the relevance that went in and came out of it."""

    index: int
    op: str
    module: str
    rule: str
    relevance_out: float = 0.0
    relevance_in: float = 0.0
    backward_seen: bool = False


class Tap(torch.autograd.Function):
    """Identity that adds the relevance reaching one op input to a report row (report mode only)."""

    @staticmethod
    def forward(ctx, x, row, direct):
        ctx.row, ctx.direct = row, direct
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        ctx.row.relevance_in += float((g if ctx.direct else x * g).sum())
        ctx.row.backward_seen = True
        return g, None, None


class Recorded:
    """Relevance at one module call's output, summed over every tensor it is watched on (value * g)."""

    def __init__(self):
        self.value: torch.Tensor | None = None
        self.relevance: torch.Tensor | None = None

    def watch(self, tensor: torch.Tensor):
        value = tensor.detach().clone()
        self.value = value

        def capture(g):
            if g is not None:
                self.relevance = value * g if self.relevance is None else self.relevance + value * g

        tensor.register_hook(capture)

    def result(self) -> torch.Tensor:
        return self.relevance if self.relevance is not None else torch.zeros_like(self.value)


class Recorder:
    """Rows of one report (None: no report), and the taps and hooks that fill them."""

    def __init__(self, reporting: bool, facts: Facts, active, where):
        self.rows: list[Row] | None = [] if reporting else None
        self.facts, self.active, self.where = facts, active, where

    def row(self, name: str, rule: str) -> Row | None:
        if self.rows is None:
            return None
        _, module_name = self.where()
        row = Row(len(self.rows), name, module_name, rule)
        self.rows.append(row)
        return row

    def tap(self, tensor, row, direct=False):
        """tensor, through an identity that adds the relevance reaching it to row (unchanged without a row)."""
        if row is None or not isinstance(tensor, torch.Tensor) or not tensor.requires_grad:
            return tensor
        tapped = Tap.apply(tensor, row, direct)
        self.facts.carry(tensor, tapped)
        return tapped

    def tap_args(self, args, row):
        if row is None:
            return args
        tapped = []
        for value in args:
            if self.active(value):
                tapped.append(self.tap(value, row))
            elif isinstance(value, (list, tuple)) and any(self.active(v) for v in value):
                tapped.append(type(value)(self.tap(v, row) if self.active(v) else v for v in value))
            else:
                tapped.append(value)
        return tuple(tapped)

    def watch(self, out, row):
        """Add the relevance leaving through out (value * g) to row."""
        if row is None:
            return
        for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                value = tensor.detach().clone()

                def add(g, value=value):
                    if g is not None:  # None for outputs of a multi-output op that nothing used
                        row.relevance_out += float((value * g).sum())

                tensor.register_hook(add)
