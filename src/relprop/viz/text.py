"""Relevance on text: each token as an HTML span whose background colour is its relevance."""
from __future__ import annotations

import html as html_escape

from . import colormaps
from .heatmap import as_array, normalize


def _span(token: str, value: float, rgb) -> str:
    red, green, blue = (int(round(255 * c)) for c in rgb[:3])
    light = 0.299 * red + 0.587 * green + 0.114 * blue > 140  # dark text on light backgrounds
    return (f'<span style="background-color: rgb({red}, {green}, {blue}); color: {"#000" if light else "#fff"}" '
            f'title="{value:.4g}">{html_escape.escape(token)}</span>')


def html(tokens, relevance, cmap="bwr", percentile: float = 100.0, separator: str = " ") -> str:
    """An HTML fragment: the tokens (escaped) in order, coloured by relevance normalised symmetrically.

    Args:
        tokens: The tokens, in order.
        relevance: One value per token.
        cmap: A diverging colour map: a name ("bwr", "coldnhot", "seismic", ...) or a matplotlib Colormap.
        percentile: Normalise by this percentile of |value| instead of the largest (values beyond it saturate).
        separator: What goes between tokens.

    Returns:
        The HTML fragment.

    Raises:
        ValueError: when tokens and relevance differ in length.

    Example:
        >>> from relprop import viz
        >>> "&lt;b&gt;" in viz.html(["<b>", "word"], [1.0, -1.0])
        True
    """
    tokens = [str(token) for token in tokens]
    values = as_array(relevance).reshape(-1)
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} relevance values; give one value per token")
    colours = colormaps.get(cmap)(0.5 + 0.5 * normalize(values[None], percentile=percentile)[0, 0])
    spans = [_span(token, float(value), colour) for token, value, colour in zip(tokens, values, colours)]
    return f'<div class="relprop-text">{separator.join(spans)}</div>'


def page(body: str, title: str = "relprop") -> str:
    """A complete HTML document around a body fragment.

    Args:
        body: The HTML fragment.
        title: The page's title.

    Returns:
        The document.
    """
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html_escape.escape(title)}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
