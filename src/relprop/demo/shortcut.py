"""The demo's second part: explain a whole "Clever Hans" data set into a store and let SpRAy find the shortcut.

``relprop.demo.watermark``'s model learnt "checkerboard in the corner => cross" beside the shapes themselves. The
demo explains ``demo-watermark:COUNT`` into a store (``relprop run``), runs Spectral Relevance Analysis on the
crosses' heatmaps (``relprop spray``), writes the interactive report, and checks what SpRAy found against the known
truth: the cluster of k-means with k = 2 (the object, or the mark) holding the most marked samples should hold
marked samples only (purity) and nearly all of them (recall). That cluster is then corrected away (P-ClArC,
relprop.demo.correction) and the correction verified.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import watermark

COUNT = 480  # about 120 crosses, 95 of them marked: seconds on two cores
# SpRAy's features for a mark of 6x6 pixels on 32x32 images: 3x3 pooling keeps the corner apart, square roots keep
# the mark's few strong pixels from drowning the object's (README, "Finding the model's strategies").
SIZE, POWER, CLUSTERS = 3, 0.5, range(2, 5)


def run(out, count: int = COUNT) -> dict:
    """Explain, analyse and report into out/watermark.zarr and out/spray/; returns the figures for demo.json."""
    from .. import datasets
    from ..analysis import report, spray

    out = Path(out)
    started = time.perf_counter()
    store = out / "watermark.zarr"
    datasets.run("demo-watermark", f"demo-watermark:{count}", store, composite="epsilon_plus_flat", target="label",
                 progress=False)
    explained = time.perf_counter()
    name = f"class-{watermark.CLASS}"
    analysis = spray.run(store, classes=[watermark.CLASS], clusters=CLUSTERS, size=SIZE, power=POWER,
                         algorithms=("kmeans",))[name]
    page = report.write(store, out / "spray", names=[name])
    marked = np.asarray(datasets.open_store(store)["extra/watermark"][:], dtype=bool)[analysis.index]
    found, purity, recall = marked_cluster(analysis.clusters["kmeans-2"], marked)
    analysed = time.perf_counter()
    from . import correction

    fixed = correction.run(out, store, int(analysis.clusters["kmeans-2"][found][0]))
    return {
        "samples": count, "class": watermark.CLASS, "explained": len(analysis.index), "marked": int(marked.sum()),
        "cluster_size": int(found.sum()), "purity": purity, "recall": recall,
        "eigengap_suggests": int(analysis.suggested),
        "seconds_explaining": round(explained - started, 2),
        "seconds_analysing": round(analysed - explained, 2),
        "store": store.name, "report": page.relative_to(out).as_posix(), "correction": fixed,
    }


def marked_cluster(clusters: np.ndarray, marked: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(members, purity, recall) of the cluster holding the largest share of marked samples."""
    found = clusters == max(set(clusters.tolist()), key=lambda c: marked[clusters == c].mean())
    return found, float(marked[found].mean()), float(found[marked].mean())


__all__ = ["run", "marked_cluster", "COUNT"]
