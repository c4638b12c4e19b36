"""Progress of a long loop: a tqdm bar when the stream is a terminal, elsewhere (logs, CI) a line per update.

The caller says what a line reads (``line(progress) -> str or None``; None prints nothing), so `relprop explain`
("relprop: 32/100 images (4.10 images/s)") and :func:`relprop.datasets.run` ("32/100 samples, 4.1 samples/s, ETA
0:00:16") share the counting and the bar.

Example:
    >>> import io
    >>> from relprop.progress import Progress
    >>> stream = io.StringIO()
    >>> progress = Progress(4, unit="image", line=lambda p: f"{p.done}/{p.total}", stream=stream)
    >>> progress.update(2); progress.update(2); progress.close()
    >>> stream.getvalue()
    '2/4\\n4/4\\n'
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    """Counts what is done of a total; shows a bar on a terminal, else prints ``line(self)`` after each update.

    Args:
        total: How many items there are.
        done: How many were done before (a resumed run); the bar starts there, the rate counts only new ones.
        unit: The bar's unit ("image", "sample").
        line: Text of one progress line, or None for no line this time (e.g. a single batch).
        enabled: False shows nothing at all.
        stream: Where to show it (default: sys.stderr at the time of the call).
        **bar: More tqdm options (e.g. dynamic_ncols=True).

    Attributes:
        new: Items done since the start (what the rate counts).
        skipped: Items the caller counts as skipped, for its line.
    """

    def __init__(self, total: int, done: int = 0, unit: str = "item", line: Callable | None = None,
                 enabled: bool = True, stream=None, **bar):
        self.total, self.done, self.enabled, self.line = total, done, enabled, line
        self.stream = stream or sys.stderr
        self.began, self.new, self.skipped = time.perf_counter(), 0, 0
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit=unit, file=self.stream, leave=False, **bar)

    def elapsed(self) -> float:
        """Seconds since the start.

        Returns:
            A float.
        """
        return time.perf_counter() - self.began

    def update(self, count: int):
        """Count ``count`` more items done and show it.

        Args:
            count: How many items were just done.
        """
        self.done += count
        self.new += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled and self.line is not None:
            text = self.line(self)
            if text is not None:
                print(text, file=self.stream, flush=True)

    def close(self):
        """Remove the bar (lines stay)."""
        if self.bar is not None:
            self.bar.close()


__all__ = ["Progress"]
