"""Verification of a correction, before and after, and its HTML report (offline: open ``index.html``).

One :class:`Probe` holds what every model is measured on: clean samples with labels, samples carrying the artifact
with its mask (the donors: their masked pixels are pasted into clean samples of the other classes), the artifact's
class and its CAV. :func:`measure` gives the metrics of relprop.correct.metrics for one model; :func:`report`
writes a table of them per model and the heatmaps of the same donor samples under each model.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .cav import CAV

METRICS = ("clean_accuracy", "poisoned_accuracy", "artifact_sensitivity", "artifact_relevance", "tcav")
DESCRIPTIONS = {
    "clean_accuracy": "accuracy on the clean samples",
    "poisoned_accuracy": "accuracy on clean samples of the other classes with the artifact pasted in",
    "artifact_sensitivity": "mean rise of the artifact class's logit when the artifact is pasted in",
    "artifact_relevance": "share of the artifact samples' positive relevance inside the artifact's mask",
    "tcav": "share of the class's clean samples whose logit grows along the CAV",
}


@dataclass
class Probe:
    """The samples a correction is verified on (model inputs; masks (N, 1, H, W) of the donors' artifact)."""

    clean: torch.Tensor
    labels: torch.Tensor
    donors: torch.Tensor
    masks: torch.Tensor
    artifact_class: int
    cav: CAV
    pixels: torch.Tensor | None = None  # the donors in display space (N, C, H, W) in [0, 1], for the report

    def poisoned(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean samples of other classes, the same with a donor's artifact pasted in, their labels)."""
        others = self.labels != self.artifact_class
        if not others.any() or len(self.donors) == 0:
            raise ValueError("the probe needs clean samples of other classes and at least one artifact sample")
        recipients = self.clean[others]
        donor = torch.arange(len(recipients)) % len(self.donors)
        return recipients, metrics.paste(recipients, self.donors[donor], self.masks[donor]), self.labels[others]


def measure(model: torch.nn.Module, probe: Probe, composite="epsilon_plus_flat", batch_size: int = 64) -> dict:
    """{metric: value} of one model (METRICS), and its relevance of the donors under "heatmaps"."""
    from ..attribution.lrp import LRP

    recipients, pasted, labels = probe.poisoned()
    target = probe.artifact_class
    lrp = LRP(model, composite)
    relevance = torch.cat([lrp(probe.donors[start:start + batch_size], target).relevance
                           for start in range(0, len(probe.donors), batch_size)])
    own = probe.clean[probe.labels == target]
    return {
        "clean_accuracy": metrics.accuracy(model, probe.clean, probe.labels, batch_size),
        "poisoned_accuracy": metrics.accuracy(model, pasted, labels, batch_size),
        "artifact_sensitivity": float(metrics.artifact_sensitivity(model, recipients, pasted, target,
                                                                   batch_size).mean()),
        "artifact_relevance": float(metrics.artifact_relevance(relevance, probe.masks).mean()),
        "tcav": metrics.tcav_score(model, own, probe.cav, target, batch_size) if len(own) else float("nan"),
        "heatmaps": relevance,
    }


def report(out, results: dict[str, dict], probe: Probe, title: str = "relprop correct: before and after",
           shown: int = 12) -> Path:
    """Write out/index.html: the metrics per model and the heatmaps of the same artifact samples under each."""
    from .. import viz
    from ..viz.save import save_image, save_text

    out = Path(out)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    count = min(shown, len(probe.donors))
    rows = []
    for metric in METRICS:
        cells = "".join(f"<td>{results[name][metric]:.3f}</td>" for name in results)
        rows.append(f"<tr><th title='{html.escape(DESCRIPTIONS[metric])}'>{metric}</th>{cells}</tr>")
    header = "".join(f"<th>{html.escape(name)}</th>" for name in results)
    pictures = []
    if probe.pixels is not None:
        for i in range(count):
            image = np.round(np.moveaxis(probe.pixels[i].numpy(), 0, -1) * 255).clip(0, 255).astype(np.uint8)
            image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
            save_image(image, out / "heatmaps" / f"input-{i}.png", scale=4)
    for n, name in enumerate(results):
        maps = viz.heatmap(results[name]["heatmaps"][:count].numpy())
        for i in range(count):
            save_image(maps[i], out / "heatmaps" / f"model{n}-{i}.png", scale=4)
    for i in range(count):
        cells = [f"<td><img src='heatmaps/input-{i}.png' alt='sample {i}'></td>"] if probe.pixels is not None else []
        cells += [f"<td><img src='heatmaps/model{n}-{i}.png' alt='{html.escape(name)}, sample {i}'></td>"
                  for n, name in enumerate(results)]
        pictures.append(f"<tr>{''.join(cells)}</tr>")
    image_header = ("<th>input</th>" if probe.pixels is not None else "") + header
    legend = "".join(f"<li><b>{metric}</b>: {html.escape(text)}</li>" for metric, text in DESCRIPTIONS.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:center}}img{{image-rendering:pixelated;width:128px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Artifact class {probe.artifact_class}; CAV at layer <code>{html.escape(probe.cav.layer)}</code>
({probe.cav.kind}, pooling {probe.cav.pooling}, from {probe.cav.counts[0]} samples with the artifact and
{probe.cav.counts[1]} without); {len(probe.clean)} clean samples, {len(probe.donors)} with the artifact.</p>
<table><tr><th>metric</th>{header}</tr>{''.join(rows)}</table><ul>{legend}</ul>
<h2>Heatmaps of the same samples (LRP, explaining class {probe.artifact_class})</h2>
<table><tr>{image_header}</tr>{''.join(pictures)}</table></body></html>"""
    return save_text(page, out / "index.html")


__all__ = ["Probe", "measure", "report", "METRICS"]
