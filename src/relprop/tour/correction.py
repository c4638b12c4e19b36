"""The demo's third part: remove the shortcut SpRAy found (P-ClArC) and verify it, against the known truth too.

The SpRAy cluster of marked crosses gives the CAV at ``LAYER``; ``relprop correct``'s pipeline projects it out
(P-ClArC) and writes the corrected model (``correct/model.json``) and its before/after report. Beside the report's
measures, which paste the artifact as the CAV's relevance localises it, the demo measures with the truth: the rise
of the cross logit when the exact checkerboard is painted into unmarked images, and the accuracy on those images.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import torch

from ..demo import model as demo_model
from ..demo import watermark

LAYER = "features.9"  # the last convolution's ReLU: the pattern CAV there removed 99% of the dependence
TEST_COUNT, TEST_SEED = 400, 5


def run(out, store, cluster: int, clustering: str = "kmeans-2") -> dict:
    """Correct with P-ClArC into out/correct; the figures for demo.json."""
    from ..correct import metrics, pipeline, saved

    out = Path(out)
    started = time.perf_counter()
    summary = pipeline.run(store, watermark.CLASS, cluster, LAYER, "p-clarc", out / "correct", clustering=clustering,
                           verify_samples=400, donors=32)
    before, after = watermark.load(), saved.load(out / "correct" / "model.json").model
    pixels, labels, _ = watermark.unmarked(TEST_COUNT, TEST_SEED)
    painted = pixels.copy()
    for image in painted:
        watermark.paint_mark(image)
    clean, marked = (demo_model.normalize(torch.from_numpy(a)) for a in (pixels, painted))
    labels = torch.from_numpy(labels)
    truth = {}
    for name, net in (("before", before), ("after", after)):
        truth[name] = {"clean_accuracy": metrics.accuracy(net, clean, labels),
                       "artifact_sensitivity": float(metrics.artifact_sensitivity(net, clean, marked,
                                                                                  watermark.CLASS).mean())}
    truth["sensitivity_drop"] = 1 - truth["after"]["artifact_sensitivity"] / truth["before"]["artifact_sensitivity"]
    truth["clean_accuracy_change"] = truth["after"]["clean_accuracy"] - truth["before"]["clean_accuracy"]
    metrics_by_model = summary["metrics"]
    return {"method": "p-clarc", "layer": LAYER, "cluster": int(cluster), "clustering": clustering,
            "report": "correct/report/index.html", "model": "correct/model.json",
            "measured": {"before": metrics_by_model["before"], "after": metrics_by_model["after (p-clarc)"]},
            "truth": truth, "test_images": TEST_COUNT, "seconds": round(time.perf_counter() - started, 2)}


def section(fixed: dict | None) -> str:
    """The page's part on the correction."""
    if fixed is None:
        return ""
    truth, measured = fixed["truth"], fixed["measured"]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{measured['before'][name]:.3f}</td>"
        f"<td>{measured['after'][name]:.3f}</td></tr>" for name in measured["before"])
    return f"""
<h2>Removing the shortcut (P-ClArC) and verifying it</h2>
<p>The SpRAy cluster of marked crosses and the other crosses give a concept activation vector (difference of their
mean activations) at layer <code>{html.escape(fixed['layer'])}</code>; P-ClArC projects every activation onto the
clean crosses' level along it, with no retraining (<code>relprop correct watermark.zarr --class
{watermark.CLASS} --cluster {fixed['cluster']} --clustering {html.escape(fixed['clustering'])} --layer
{html.escape(fixed['layer'])} --method p-clarc</code>). Checked with the known truth on {fixed['test_images']}
unmarked images: painting the mark in raised the cross logit by {truth['before']['artifact_sensitivity']:.2f} before
and by {truth['after']['artifact_sensitivity']:.2f} after (<b>{truth['sensitivity_drop']:.0%} less</b>); accuracy
on them went from {truth['before']['clean_accuracy']:.1%} to {truth['after']['clean_accuracy']:.1%}.</p>
<table><tr><th>measure (artifact localised by the CAV's relevance)</th><th>before</th><th>after</th></tr>{rows}
</table>
<p><a href="{html.escape(fixed['report'])}">Open the before/after report</a>: the heatmaps of the same marked
crosses under both models. The corrected model is <code>{html.escape(fixed['model'])}</code>, usable as
<code>--model</code>.</p>"""


def describe(fixed: dict) -> str:
    truth = fixed["truth"]
    return (f"P-ClArC at {fixed['layer']}: the mark raises the cross logit by "
            f"{truth['before']['artifact_sensitivity']:.2f} before, {truth['after']['artifact_sensitivity']:.2f} "
            f"after ({truth['sensitivity_drop']:.0%} less); clean accuracy {truth['before']['clean_accuracy']:.1%} "
            f"-> {truth['after']['clean_accuracy']:.1%}; report in {fixed['report']}")


__all__ = ["run", "section", "describe", "LAYER"]
