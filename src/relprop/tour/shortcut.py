"""The demo's second part: explain a whole "Clever Hans" data set into a store and let SpRAy find the shortcut.

``relprop.demo.watermark``'s model learnt "checkerboard in the corner => cross" beside the shapes themselves. The
demo explains ``demo-watermark:COUNT`` into a store (``relprop run``), runs Spectral Relevance Analysis on the
crosses' heatmaps (``relprop spray`` with its defaults), writes the interactive report, and checks what SpRAy found
against the known truth: in the clustering the report opens on (the most separated one), the cluster holding the
most marked samples should hold marked samples only (purity) and nearly all of them (recall). That cluster is then
corrected away (P-ClArC, relprop.tour.correction) and the correction verified.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..demo import watermark

COUNT = 480  # about 120 crosses, 95 of them marked: seconds on two cores


def run(out, count: int = COUNT) -> dict:
    """Explain, analyse and report into out/watermark.zarr and out/spray/; returns the figures for demo.json.

    Args:
        out: The output folder.
        count: How many images are explained.

    Returns:
        The figures, as a dict.
    """
    from .. import datasets
    from ..analysis import pages, spray

    out = Path(out)
    started = time.perf_counter()
    store = out / "watermark.zarr"
    datasets.run("demo-watermark", f"demo-watermark:{count}", store, composite="epsilon_plus_flat", target="label",
                 progress=False)
    explained = time.perf_counter()
    name = f"class-{watermark.CLASS}"
    analysis = spray.run(store, classes=[watermark.CLASS])[name]  # the defaults of `relprop spray`
    page = pages.write(store, out / "spray", names=[name])
    marked = np.asarray(datasets.open_store(store)["extra/watermark"][:], dtype=bool)[analysis.index]
    found, purity, recall = marked_cluster(analysis.clusters[analysis.chosen], marked)
    analysed = time.perf_counter()
    from . import correction

    fixed = correction.run(out, store, int(analysis.clusters[analysis.chosen][found][0]), clustering=analysis.chosen)
    return {
        "samples": count, "class": watermark.CLASS, "explained": len(analysis.index), "marked": int(marked.sum()),
        "cluster_size": int(found.sum()), "purity": purity, "recall": recall,
        "eigengap_suggests": int(analysis.suggested), "clustering": analysis.chosen,
        "seconds_explaining": round(explained - started, 2),
        "seconds_analysing": round(analysed - explained, 2),
        "store": store.name, "report": page.relative_to(out).as_posix(), "correction": fixed,
    }


def marked_cluster(clusters: np.ndarray, marked: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(members, purity, recall) of the cluster holding the largest share of marked samples.

    Args:
        clusters: (n,) cluster labels.
        marked: (n,) booleans: which samples carry the mark.

    Returns:
        A tuple (members mask, purity, recall).
    """
    found = clusters == max(set(clusters.tolist()), key=lambda c: marked[clusters == c].mean())
    return found, float(marked[found].mean()), float(found[marked].mean())


__all__ = ["run", "marked_cluster", "COUNT"]
