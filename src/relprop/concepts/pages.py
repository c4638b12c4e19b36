"""Concept pages: one image's top concepts with their conditional heatmaps, and a store's concept atlas.

``image_page``: the image, its heatmap, then per top concept of the layer its relevance, its conditional heatmap
and, when a store with relevance maximisation for the layer is given, its reference samples, drawn as the atlas does.
``atlas_page``: per channel of the layer, its reference samples by relevance (each cut to the channel's receptive
field, beside its conditional heatmap there) and by activation. Both write
index.html with PNGs beside it into a folder, every image referenced by a relative path.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from .. import viz
from ..attribution.lrp import LRP
from .conditional import conditional
from .attribution_graph import attribution_graph
from .maximisation import reference_views, store_attributor, store_recipe
from .relevance import concept_relevance, top_concepts

STYLE = ("<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{padding:4px;"
         "border-bottom:1px solid #ddd;vertical-align:middle;text-align:left}img{image-rendering:pixelated}</style>")


def _png(image: np.ndarray, folder: Path, name: str, size: int = 96) -> str:
    """Save an (H, W, 3) uint8 picture enlarged to about size pixels; returns its <img> tag."""
    scale = max(1, size // max(image.shape[:2]))
    viz.save_image(image, folder / name, scale=scale)
    return f'<img src="{html.escape(name)}" alt="{html.escape(name)}" width="{image.shape[1] * scale}">'


def _pixels_image(pixels) -> np.ndarray:
    """(C, H, W) in [0, 1] floats or uint8 -> (H, W, 3) uint8."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return array.transpose(1, 2, 0)


class ReferenceDrawer:
    """Draws a store's reference samples of a layer's channels: each cut to the channel's receptive field beside the
    channel's conditional heatmap there (cut=True and heatmaps), or the store's preview.

    Args:
        opened: The opened store (relprop.datasets.Store).
        layer: The layer's qualified module name.
        heatmaps: Draw conditional heatmaps beside the cut samples.
        model: The model; None: loaded from the store's model spec.
        source: The data set the store was made from (a relprop.datasets Source); None: opened from the store's data
            spec.
        cmap: The colormap of the heatmaps.
        composite: The Composite the store's run was given as an object (see maximise); None: rebuilt from the store.
    """

    def __init__(self, opened, layer: str, heatmaps: bool, model=None, source=None, cmap: str = "bwr",
                 composite=None):
        if "preview" not in opened.group:
            raise ValueError(f"{opened.path} keeps no previews (not an image data set); its reference samples cannot "
                             "be shown")
        self.previews, self.layer, self.heatmaps, self.cmap = opened.group["preview"], layer, heatmaps, cmap
        if heatmaps:
            model, self.source = store_recipe(opened, model, source)
            self.lrp, self.targets = store_attributor(opened, model, composite), np.asarray(opened["target"][:])

    def tags(self, channel: int, samples: list[int], folder: Path, stem: str, cut: bool = True) -> list[str]:
        """One <img> tag (or a crop and heatmap pair) per sample, files named stem-channel-sample.

        Args:
            channel: The channel.
            samples: Store positions.
            folder: Where the image files go.
            stem: The files' name prefix.
            cut: Cut each sample to the channel's receptive field.

        Returns:
            HTML tags.
        """
        if cut and self.heatmaps and samples:
            views = reference_views(self.lrp, self.source, self.layer, channel, samples, self.targets[samples])
            return [_view(pixels, heatmap, folder, f"{stem}-{channel}-{i}", self.cmap)
                    for i, (pixels, heatmap) in zip(samples, views)]
        return [_png(_pixels_image(self.previews[i]), folder, f"{stem}-{channel}-{i}.png", 64) for i in samples]


def _references(store, layer: str, heatmaps: bool):
    """(drawer, relevance_index, relevance_value) of a layer's relevance maximisation in a store, or None."""
    if store is None:
        return None
    from ..datasets import open_store

    opened = open_store(store)
    name = f"concepts/{layer}/relevance_index"
    if name not in opened.group:
        raise ValueError(f"{store} has no relevance maximisation for layer {layer!r}; run `relprop concepts "
                         f"--store {store} --layer {layer}` first")
    return (ReferenceDrawer(opened, layer, heatmaps), np.asarray(opened.group[name][:]),
            np.asarray(opened.group[f"concepts/{layer}/relevance_value"][:]))


def image_page(lrp: LRP, x: torch.Tensor, pixels, layer: str, out, target=None, top: int = 8, store=None,
               cmap: str = "bwr", title: str = "relprop concepts", lower: str | None = None,
               reference_heatmaps: bool = True) -> dict:
    """Write out/index.html for one image: its top concepts at a layer, each with its conditional heatmap.

    Args:
        lrp: The LRP explainer (relprop.LRP) of the model; its composite gives the rules.
        x: The image, as a batch of one.
        pixels: The image in display space (C, H, W) in [0, 1].
        layer: The layer's qualified module name.
        out: The folder the page is written into.
        target: The class explained, as LRP takes it (None: the predicted class).
        top: How many concepts.
        store: A store with relevance maximisation results for layer, whose reference samples are shown; None: none.
        cmap: The colormap of the heatmaps.
        title: The page's title.
        lower: A lower layer: each concept then shows its attribution graph to it.
        reference_heatmaps: Show the store's reference samples as the atlas does (cut, beside their heatmaps), else
            its previews.

    Returns:
        What the page shows (target, concepts), as a dict.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    references = _references(store, layer, reference_heatmaps)
    explanation = lrp(x, target)
    explained = int(explanation.target[0]) if explanation.target is not None else target
    sums = concept_relevance(lrp, x, explained, [layer])[layer]
    values, channels = top_concepts(sums, top)
    channels = channels[0].tolist()
    heatmaps = conditional(lrp, x, explained, [{layer: [c]} for c in channels]).relevance[:, 0]
    rows = []
    for rank, (channel, value) in enumerate(zip(channels, values[0].tolist())):
        cell = _png(viz.heatmap(heatmaps[rank:rank + 1], cmap)[0], out, f"concept-{channel}.png")
        samples = ""
        if references is not None:
            drawer, reference_index, reference_value = references
            shown = [int(i) for i, v in zip(reference_index[channel], reference_value[channel]) if np.isfinite(v)]
            samples = " ".join(f'<span class="ref">{tag}</span>' for tag in drawer.tags(channel, shown, out,
                                                                                       "reference"))
        rows.append(f"<tr><td>{channel}</td><td>{value:.4g}</td><td>{value / float(sums[0].sum()):.1%}</td>"
                    f"<td>{cell}</td><td>{samples}</td></tr>")
    cut = " (each cut to the concept's receptive field, beside its heatmap there)" if references and \
        reference_heatmaps else ""
    image = _png(_pixels_image(pixels), out, "image.png", 192)
    heatmap = _png(viz.heatmap(explanation.relevance, cmap)[0], out, "heatmap.png", 192)
    body = (f"{STYLE}{REFERENCE_STYLE}<h1>{html.escape(title)}</h1><p>explained class {explained}; layer "
            f"<code>{html.escape(layer)}</code>: top {len(channels)} of {sums.shape[1]} concepts by relevance</p>"
            f"<p>{image} {heatmap}</p><table><tr><th>channel</th><th>relevance</th><th>share of the layer</th>"
            f"<th>conditional heatmap</th><th>reference samples{cut}</th></tr>{''.join(rows)}</table>")
    graph = None
    if lower is not None:
        graph = attribution_graph(lrp, x, explained, upper=layer, lower=lower, channels=channels, top=3)
        edges = "".join(f"<tr><td>{row['upper']}</td><td>{row['lower']}</td><td>{row['relevance']:.4g}</td>"
                        f"<td>{row['share']:.1%}</td></tr>" for row in graph.rows())
        body += (f"<h2>Attribution graph: <code>{html.escape(layer)}</code> from <code>{html.escape(lower)}</code>"
                 f"</h2><p>{graph.svg()}</p><table><tr><th>concept</th><th>from lower concept</th><th>relevance</th>"
                 f"<th>share of the concept</th></tr>{edges}</table>")
    viz.save_text(viz.page(body, title), out / "index.html")
    return {"target": explained, "channels": channels, "relevance": values[0].tolist(), "heatmaps": heatmaps,
            "graph": graph}


def atlas_page(store, layer: str, out, references, title: str = "relprop concept atlas", model=None, source=None,
               heatmaps: bool = True, cmap: str = "bwr", composite=None) -> Path:
    """Write out/index.html: per channel of the layer, its reference samples by relevance and by activation.

    Args:
        store: The path of a ``relprop run`` store (LRP).
        layer: The layer's qualified module name.
        out: The folder the page is written into.
        references: The layer's References (maximise).
        title: The page's title.
        model: The model; None: loaded from the store's model spec.
        source: The data set the store was made from (a relprop.datasets Source); None: opened from the store's data
            spec.
        heatmaps: Show each reference sample cut to the channel's receptive field beside its conditional heatmap.
        cmap: The colormap of the heatmaps.
        composite: The Composite the store's run was given as an object (see maximise); None: rebuilt from the
            store.

    Returns:
        The page's path.
    """
    from ..datasets import open_store

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opened = open_store(store)
    drawer = ReferenceDrawer(opened, layer, heatmaps, model, source, cmap, composite)
    names = opened.class_names
    rows = []
    for channel in range(len(references.relevance_index)):
        cells = []
        for kind in ("relevance", "activation"):
            index, value = getattr(references, f"{kind}_index")[channel], getattr(references, f"{kind}_value")[channel]
            shown = [(int(i), float(v)) for i, v in zip(index, value) if np.isfinite(v)]
            tags = drawer.tags(channel, [i for i, _ in shown], out, kind, cut=kind == "relevance")
            cells.append(" ".join(f'<span class="ref" title="sample {i}: {v:.4g}">{tag}</span>'
                                  for (i, v), tag in zip(shown, tags)))
        classes = references.class_relevance[:, channel]
        best = int(np.nanargmax(classes)) if np.isfinite(classes).any() else None
        named = "" if best is None else (names[best] if names and best < len(names) else str(best))
        rows.append(f"<tr><td>{channel}</td><td>{html.escape(named)}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    shown_as = (" Each most relevant sample is cut to the part the channel sees (its receptive field at its most "
                "relevant position), beside the channel's conditional heatmap there (red: positive relevance, blue: "
                "negative)." if heatmaps else "")
    body = (f"{STYLE}{REFERENCE_STYLE}<h1>{html.escape(title)}</h1><p>store <code>{html.escape(str(store))}</code>, "
            f"layer <code>{html.escape(layer)}</code>: per channel, the samples where it is most relevant and, for "
            f"comparison, those where it is most activated.{shown_as}</p><table><tr><th>channel</th><th>class it "
            "serves most (mean relevance)</th><th>most relevant</th><th>most activated</th></tr>"
            f"{''.join(rows)}</table>")
    return viz.save_text(viz.page(body, title), out / "index.html")


REFERENCE_STYLE = ("<style>.ref{display:inline-block;margin:2px 6px 2px 0;padding:2px;border:1px solid #ccc;"
                   "white-space:nowrap}.ref img{vertical-align:middle;margin:0 1px}</style>")


def _view(pixels, heatmap, folder: Path, stem: str, cmap: str) -> str:
    """A reference sample's crop and its heatmap's crop, side by side, as two <img> tags of one size (the heatmap
    alone where the data set gives no display pixels)."""
    picture = "" if pixels is None else _png(_pixels_image(pixels), folder, f"{stem}.png", 64)
    return f"{picture}{_png(viz.heatmap(heatmap, cmap)[0], folder, f'{stem}-heatmap.png', 64)}"
