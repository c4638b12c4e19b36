"""Op outputs that a backward reads again, kept as aliases instead of copies.

The engine watches in-place ops: before the model changes a kept output in place it copies it into `preserved`,
unless the change is harmless (a ReLU: where it changed a value, the gradient arriving there is zero).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KeptOutput:
    preserved: torch.Tensor | None = None  # copy of the output taken before the model changed it in place
    harmless_versions: set | None = None  # output versions whose values serve the backward as well as the original
    consumers: int = 0  # ops that read the output ...
    relu_consumers: int = 0  # ... and how many of them are ReLUs
    rectified: bool = False  # a ReLU was applied to the output in place

    def keep(self, output: torch.Tensor) -> torch.Tensor:
        """A detached alias of the output: no copy, and no reference cycle through the graph."""
        self.harmless_versions = {output._version}
        return output.detach()

    def values(self, alias: torch.Tensor) -> torch.Tensor | None:
        """The output as the forward made it, or None when it changed in a way nobody saw."""
        if self.preserved is not None:
            return self.preserved
        return alias if alias._version in self.harmless_versions else None

    def feeds_only_relu(self) -> bool:
        """No relevance can arrive on outputs <= 0: they all go through a ReLU, whose gradient is zero there."""
        return self.rectified or (self.consumers > 0 and self.consumers == self.relu_consumers)
