"""A static HTML report of the SpRAy analyses in a store: open ``index.html``, no server needed.

Per analysed set: the eigenvalue spectrum (the eigengap marked), the 2-D embedding coloured by cluster (choose
the clustering and the embedding; hover or click a point to see that sample and its heatmap), and per cluster its
mean heatmap, what sets it apart (analysis/apart.py: NEON on k-means over the pooled heatmaps, started from the
cluster) and its most typical samples (nearest to the cluster's centre in the spectral space k-means used).
Everything is read from the store (``analysis/``, ``relevance``, ``preview``), relevance one chunk at a time.
Samples get one small PNG each (input and heatmap side by side), at most ``max_samples`` per set (a seeded
subset; typical samples always), so a report over 100k samples stays a few thousand files.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..datasets import store as stores
from . import apart, spray

THUMBNAIL = 96  # pixels, the least height a sample's picture is shown at


def _maps(block: np.ndarray) -> np.ndarray:
    """(n, H, W) heatmaps summed over channels, each scaled by its largest |value|."""
    values = np.asarray(block, dtype=np.float32)
    if values.ndim == 4:
        values = values.sum(1)
    scale = np.abs(values).reshape(len(values), -1).max(1)
    return values / np.where(scale > 0, scale, 1.0)[:, None, None]


def _resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return maps if maps.shape[1:] == size else spray.adaptive_average(maps, *size)


def _picture(preview: np.ndarray | None, heatmap: np.ndarray, cmap: str) -> np.ndarray:
    """(H, W', 3) uint8: the input (when there is a preview) and its heatmap side by side."""
    from .. import viz

    coloured = viz.heatmap(heatmap, cmap=cmap)[0]
    if preview is None:
        return coloured
    image = np.moveaxis(preview, 0, -1)
    image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([image, gap, coloured], axis=1)


def typical_samples(result: spray.Analysis, clustering: str, count: int) -> dict[int, list[int]]:
    """{cluster: positions in result.index}, nearest first to the cluster's mean in the spectral rows.

    Args:
        result: A SpRAy Analysis.
        clustering: The clustering's name.
        count: Samples per cluster.

    Returns:
        Cluster -> positions.
    """
    labels = result.clusters[clustering]
    k = max(2, len(set(labels.tolist()) - {-1}))
    rows = spray.spectral_rows(result.eigenvectors, min(k, result.eigenvectors.shape[1]))
    typical = {}
    for cluster in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == cluster)
        distance = np.linalg.norm(rows[members] - rows[members].mean(0), axis=1)
        typical[cluster] = members[np.argsort(distance, kind="stable")[:count]].tolist()
    return typical


def write(store, out, names=None, max_samples: int = 2000, typical: int = 8, cmap: str = "bwr", seed: int = 0) -> Path:
    """Write ``out/index.html`` with ``out/samples/*.png`` and ``out/means/*.png``; returns the page's path.

    Args:
        store: The store's path.
        out: The report's folder.
        names: The analyses to show ("class-<k>", "all"); None: every stored one.
        max_samples: The most samples drawn per analysis.
        typical: Typical samples shown per cluster.
        cmap: The heatmaps' colour map.
        seed: Seeds which samples are drawn when there are more than max_samples.

    Returns:
        The page's path.

    Raises:
        ValueError: for a store without SpRAy analyses.
    """
    from .. import viz

    out = Path(out)
    root = stores.open_store(store).group
    names = list(names or spray.stored(store))
    if not names:
        raise ValueError(f"{store} holds no SpRAy analysis yet; run `relprop spray {store}` first")
    results = [spray.read(store, name) for name in names]
    class_names = stores.class_names(root)
    labels = np.asarray(root["label"][:])
    outputs = np.asarray(root["output"][:])
    known = ~np.isnan(outputs).all(1)  # imported heatmaps may come without the model's outputs
    predicted = np.where(known, np.nan_to_num(outputs, nan=-np.inf).argmax(1), -1)
    ids = np.asarray(root["id"][:]) if "id" in root else np.arange(len(labels)).astype(str)
    previews = root["preview"] if "preview" in root else None
    relevance = root["relevance"]
    images = relevance.ndim >= 3
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "means").mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    sets, shown, sums = [], set(), {}
    for result in results:
        chosen = result.chosen
        best = typical_samples(result, chosen, typical)
        picked = np.sort(rng.choice(len(result.index), min(max_samples, len(result.index)), replace=False))
        visible = sorted(set(picked.tolist()) | {p for members in best.values() for p in members})
        shown.update(int(result.index[p]) for p in visible)
        sets.append((result, chosen, best, visible))
    cluster_of = {}  # store index -> [(set number, cluster)], for the mean heatmaps of the chosen clusterings
    for number, (result, chosen, _, _) in enumerate(sets):
        for index, cluster in zip(result.index.tolist(), result.clusters[chosen].tolist()):
            cluster_of.setdefault(index, []).append((number, cluster))

    wanted = np.array(sorted(cluster_of), dtype=np.int64)
    if images:
        for positions, block in stores.read_chunks(relevance, wanted, stores.chunk_size(root)):
            indices = wanted[positions]
            maps = _maps(block)
            shown_here = [i for i, index in enumerate(indices) if int(index) in shown]
            preview_rows = None
            if previews is not None and shown_here:
                preview_rows = dict(zip(shown_here, (np.asarray(previews[int(indices[i])]) for i in shown_here)))
            for i, index in enumerate(indices.tolist()):
                for key in cluster_of[index]:
                    total, count = sums.get(key, (0.0, 0))
                    sums[key] = (total + maps[i], count + 1)
                if i in shown_here:
                    preview = None if preview_rows is None else preview_rows[i]
                    heat = maps[i:i + 1] if preview is None else _resize(maps[i:i + 1], preview.shape[1:])
                    picture = _picture(preview, heat, cmap)
                    viz.save_image(picture, out / "samples" / f"{index}.png",
                                   scale=max(1, THUMBNAIL // picture.shape[0]))

    def name_of(label):
        label = int(label)
        return class_names[label] if class_names and 0 <= label < len(class_names) else str(label)

    data = []
    for number, (result, chosen, best, visible) in enumerate(sets):
        means = {}
        for cluster in sorted(set(result.clusters[chosen].tolist()) - {-1}):
            if (number, cluster) in sums:
                total, count = sums[(number, cluster)]
                heat = viz.heatmap(total / count, cmap=cmap)[0]
                path = f"means/{result.name}-{cluster}.png"
                viz.save_image(heat, out / path, scale=max(1, THUMBNAIL // heat.shape[0]))
                means[cluster] = path
        apart_maps, apart_note = _apart(root, result, chosen, out, cmap) if images else ({}, "")
        index = result.index[visible]
        title = result.name if not result.name.startswith("class-") else \
            f"{result.name} ({name_of(result.name.split('-')[1])})"
        data.append({
            "name": result.name, "title": title, "count": int(len(result.index)), "suggested": result.suggested,
            "eigenvalues": [round(float(v), 6) for v in result.eigenvalues], "chosen": chosen,
            "index": index.tolist(), "id": [str(ids[i]) for i in index],
            "label": [name_of(labels[i]) if labels[i] >= 0 else "?" for i in index],
            "predicted": [name_of(predicted[i]) if predicted[i] >= 0 else "?" for i in index],
            "clusters": {name: result.clusters[name][visible].tolist() for name in result.clusters},
            "sizes": {name: {str(c): int((labels_ == c).sum()) for c in sorted(set(labels_.tolist()))}
                      for name, labels_ in result.clusters.items()},
            "embeddings": {name: np.round(points[visible], 4).tolist() for name, points in result.embeddings.items()},
            "means": {str(c): p for c, p in means.items()},
            "apart": apart_maps, "apart_note": apart_note,
            "typical": {str(c): [int(result.index[p]) for p in members] for c, members in best.items()},
            "parameters": result.parameters, "notes": result.notes,
            "conductance": {name: round(float(score), 4) for name, score in result.conductance.items()
                            if np.isfinite(score)},
        })
    page = out / "index.html"
    viz.save_text(_PAGE.replace("__TITLE__", html.escape(f"SpRAy: {Path(store).name}"))
                  .replace("__IMAGES__", "true" if images else "false")
                  .replace("__SKIPPED__", json.dumps(_skipped_line(store)).replace("</", "<\\/"))
                  .replace("__DATA__", json.dumps(data, separators=(",", ":")).replace("</", "<\\/")), page)
    return page


def _apart(root, result, chosen, out, cmap):
    """({cluster: PNG of what sets it apart}, the note saying what that is) for one set (analysis/apart.py)."""
    from .. import viz

    size, power = int(result.parameters.get("size", 8)), float(result.parameters.get("power", 1.0))
    features = spray.store_features(root, {result.name: result.index}, size, power)[result.name]
    try:
        evidence = apart.explain_clusters(features, result.clusters[chosen],
                                          apart.pooled_cells(root["relevance"].shape[1:], size))
    except ValueError as error:
        return {}, f"what sets clusters apart: not computed ({error})"
    paths = {}
    for cluster, relevance in zip(evidence.clusters, evidence.maps):
        picture = viz.heatmap(relevance[None], cmap=cmap)[0]
        path = f"means/{result.name}-{cluster}-apart.png"
        viz.save_image(picture, out / path, scale=max(1, THUMBNAIL // picture.shape[0]))
        paths[str(cluster)] = path
    return paths, f"{apart.NOTE}; {evidence.agreement:.0%} of samples keep their SpRAy cluster in that k-means"


def _skipped_line(store) -> str:
    skipped = spray.skipped_sets(store)
    return f"Not analysed: {spray.skipped_message(skipped)}." if skipped else ""


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
section { border-top: 1px solid #ccc; padding-top: 0.5em; margin-top: 1em; }
.row { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
canvas { border: 1px solid #ddd; cursor: crosshair; }
.panel { width: 300px; }
.panel img { image-rendering: pixelated; border: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: middle; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 6px; margin-right: 4px; }
.thumbs img { height: 48px; image-rendering: pixelated; margin-right: 2px; cursor: pointer; }
small { color: #666; }
</style></head><body>
<h1>__TITLE__</h1>
<p><small>Spectral Relevance Analysis: samples whose heatmaps look alike sit together; a cluster apart from the rest is
a strategy of the model (maybe a shortcut). Hover or click a point; <code>#sample=INDEX</code> in the address opens
one.</small></p>
<p id="skipped"></p>
<p id="address" role="status"></p>
<div id="sets"></div>
<script>
const SETS = __DATA__;
const SKIPPED = __SKIPPED__;
const IMAGES = __IMAGES__;
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f"];
const colour = c => c < 0 ? "#bbbbbb" : COLOURS[c % COLOURS.length];
const views = {};

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  Object.entries(attributes || {}).forEach(([k, v]) => node.setAttribute(k, v));
  children.forEach(child => node.append(child));
  return node;
}

function drawSpectrum(canvas, set) {
  const context = canvas.getContext("2d"), values = set.eigenvalues, width = canvas.width, height = canvas.height;
  const top = Math.max(...values, 1e-9), step = (width - 30) / values.length;
  context.clearRect(0, 0, width, height);
  values.forEach((v, i) => {
    context.fillStyle = i < set.suggested ? "#d62728" : "#1f77b4";
    const h = (height - 20) * v / top;
    context.fillRect(25 + i * step, height - 10 - h, Math.max(1, step - 2), h);
  });
  context.fillStyle = "#222"; context.font = "10px sans-serif";
  context.fillText(top.toFixed(3), 0, 10); context.fillText("0", 12, height - 10);
}

function draw(view) {
  const {set, canvas} = view, context = canvas.getContext("2d");
  const points = set.embeddings[view.embedding], clusters = set.clusters[view.clustering];
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 12, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  view.screen = points.map(p => [pad + w * (p[0] - x0) / ((x1 - x0) || 1),
                                  pad + h * (1 - (p[1] - y0) / ((y1 - y0) || 1))]);
  context.clearRect(0, 0, canvas.width, canvas.height);
  view.screen.forEach(([x, y], i) => {
    context.fillStyle = colour(clusters[i]);
    context.beginPath(); context.arc(x, y, 3, 0, 2 * Math.PI); context.fill();
  });
  if (view.selected !== undefined) {
    const [x, y] = view.screen[view.selected];
    context.strokeStyle = "#000"; context.lineWidth = 2;
    context.beginPath(); context.arc(x, y, 7, 0, 2 * Math.PI); context.stroke();
  }
}

function show(view, position) {
  const set = view.set, index = set.index[position];
  view.selected = position;
  draw(view);
  const panel = view.panel;
  panel.replaceChildren();
  if (IMAGES) panel.append(element("img", {src: "samples/" + index + ".png", alt: "sample " + index, class: "sample"}));
  const cluster = set.clusters[view.clustering][position];
  panel.append(element("p", {class: "caption"},
    `sample ${index} (${set.id[position]}): label ${set.label[position]}, predicted ${set.predicted[position]}, ` +
    `cluster ${cluster} of ${view.clustering}`));
}

function nearest(view, event) {
  const box = view.canvas.getBoundingClientRect();
  const x = (event.clientX - box.left) * view.canvas.width / box.width;
  const y = (event.clientY - box.top) * view.canvas.height / box.height;
  let best = -1, distance = 64;
  view.screen.forEach(([px, py], i) => {
    const d = (px - x) ** 2 + (py - y) ** 2;
    if (d < distance) { distance = d; best = i; }
  });
  return best;
}

function clusterTable(view) {
  const set = view.set, table = element("table", {}, element("tr", {}, element("th", {}, "cluster"),
    element("th", {}, "samples"), element("th", {}, "mean heatmap"), element("th", {}, "what sets it apart"),
    element("th", {}, "most typical samples")));
  const sizes = set.sizes[set.chosen];
  Object.keys(sizes).forEach(c => {
    const mean = set.means[c] ? element("img", {src: set.means[c], height: 64, alt: "mean of cluster " + c}) : "";
    const apart = set.apart[c] ? element("img", {src: set.apart[c], height: 64, title: set.apart_note,
                                                 alt: "what sets cluster " + c + " apart"}) : "";
    const thumbs = element("div", {class: "thumbs"});
    (set.typical[c] || []).forEach(index => {
      const image = element("img", {src: "samples/" + index + ".png", alt: "sample " + index,
                                    title: "sample " + index});
      image.onclick = () => select(set.name, index);
      if (IMAGES) thumbs.append(image);
    });
    const swatch = element("span", {class: "swatch", style: "background:" + colour(+c)});
    table.append(element("tr", {}, element("td", {}, swatch, c), element("td", {}, String(sizes[c])),
                         element("td", {}, mean), element("td", {}, apart), element("td", {}, thumbs)));
  });
  if (set.apart_note) table.append(element("caption", {style: "caption-side: bottom; text-align: left"},
                                           element("small", {}, set.apart_note)));
  return table;
}

function build(set) {
  const names = Object.keys(set.embeddings);
  const view = {set, clustering: set.chosen, embedding: names.includes("tsne") ? "tsne" : names[0]};
  views[set.name] = view;
  const section = element("section", {id: set.name});
  section.append(element("h2", {}, `${set.title}: ${set.count} samples, eigengap suggests ${set.suggested} ` +
                                     `cluster${set.suggested == 1 ? "" : "s"}`));
  const scores = Object.entries(set.conductance).map(([name, score]) => `${name} ${score.toFixed(3)}`).join(", ");
  section.append(element("p", {class: "separation"}, `Shown first: ${set.chosen}, the most separated clustering ` +
    `(lowest conductance: the share of neighbour links that cross to another cluster; 0: apart). ` +
    `Conductance: ${scores || "none"}.`));
  set.notes.forEach(note => section.append(element("p", {class: "note"}, note)));
  const spectrum = element("canvas", {width: 360, height: 140, class: "spectrum"});
  const choices = element("p", {});
  [["clustering", Object.keys(set.clusters)], ["embedding", Object.keys(set.embeddings)]].forEach(([what, names]) => {
    const picker = element("select", {class: what});
    names.forEach(name => picker.append(element("option", {value: name}, name)));
    picker.value = view[what];
    picker.onchange = () => { view[what] = picker.value; draw(view); };
    choices.append(what + " ", picker, " ");
  });
  view.canvas = element("canvas", {width: 460, height: 460, class: "embedding"});
  view.panel = element("div", {class: "panel"}, element("p", {}, element("small", {}, "hover or click a point")));
  view.canvas.onmousemove = event => { const i = nearest(view, event); if (i >= 0) show(view, i); };
  view.canvas.onclick = view.canvas.onmousemove;
  const left = element("div", {}, element("h3", {}, "eigenvalues of the Laplacian"), spectrum, choices);
  section.append(element("div", {class: "row"}, left, view.canvas, view.panel));
  section.append(element("h3", {}, "clusters of " + set.chosen), clusterTable(view));
  document.getElementById("sets").append(section);
  drawSpectrum(spectrum, set);
  if (Object.keys(set.embeddings).length) draw(view); else view.canvas.remove();
}

function select(name, index) {
  const view = views[name], position = view ? view.set.index.indexOf(index) : -1;
  if (position < 0) return false;
  show(view, position);
  view.canvas.scrollIntoView({block: "nearest"});
  return true;
}

// for scripted checks and links: where a sample's point is on screen, and selecting one
window.spray = {
  select,
  point(name, index) {
    const view = views[name], position = view.set.index.indexOf(index), box = view.canvas.getBoundingClientRect();
    const [x, y] = view.screen[position];
    return {x: box.left + x * box.width / view.canvas.width, y: box.top + y * box.height / view.canvas.height};
  },
};

document.getElementById("skipped").textContent = SKIPPED;
SETS.forEach(build);
function fromAddress() {
  const match = /sample=(\d+)/.exec(location.hash);
  const note = document.getElementById("address");
  note.textContent = "";
  if (match && !SETS.some(set => select(set.name, +match[1])))
    note.textContent = "sample " + match[1] + " is in no analysed set (its class was skipped or not analysed, or the " +
      "index is past the store's samples), so no sample is shown for it.";
}
window.addEventListener("hashchange", fromAddress);
fromAddress();
</script></body></html>
"""

__all__ = ["write", "typical_samples"]
