"""What ``relprop demo`` shows: generated images, the deciding object's mask, and one heatmap per composite.

For each image and composite it measures the share of positive relevance inside the deciding object's mask.
Relevance that follows the evidence scores high even though the object covers only a few percent of the image.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from .. import viz
from ..attribution.lrp import LRP
from ..demo import model as demo_model
from ..demo.shapes import KINDS, generate
from ..demo.watermark import ELSEWHERE_SHARE as ELSEWHERE, MARKED_SHARE as MARKED
from . import correction

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat", "epsilon")


def positive_share_in_mask(relevance: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per sample: positive part of the channel-summed relevance inside the mask, over all of it.

    Args:
        relevance: (N, C, H, W) relevance.
        masks: (N, H, W) booleans: the deciding object.

    Returns:
        (N,) shares in [0, 1].
    """
    positive = relevance.sum(1).clamp(min=0)
    total = positive.flatten(1).sum(1)
    inside = (positive * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))


def _composite_parameters(name: str) -> dict:
    if name == "epsilon_gamma_box":  # the box is what the pixels [0, 1] become after normalisation
        mean = torch.tensor(demo_model.MEAN).view(3, 1, 1)
        std = torch.tensor(demo_model.STD).view(3, 1, 1)
        return {"low": (0 - mean) / std, "high": (1 - mean) / std}
    return {}


def _balanced(count: int, seed: int):
    """count generated images whose classes take turns (circle, square, triangle, cross, circle, ...)."""
    images, labels, masks = generate(4 * count + 16, seed)
    picks, used = [], set()
    for turn in range(count):
        wanted = turn % len(KINDS)
        pick = next(i for i in range(len(labels)) if labels[i] == wanted and i not in used)
        picks.append(pick)
        used.add(pick)
    return images[picks], labels[picks], masks[picks]


def run(out, composites=COMPOSITES, count: int = 8, seed: int = 7, shortcut: bool = True) -> dict:
    """Explain count generated images with each composite; write demo.png, index.html and demo.json into out; with
    shortcut, also explain the "Clever Hans" data set into a store and let SpRAy find its planted mark (see
    relprop.tour.shortcut: watermark.zarr and spray/index.html).

    Args:
        out: The output folder.
        composites: The composites' names.
        count: How many images.
        seed: The images' seed.
        shortcut: Also run the "Clever Hans" part (relprop.tour.shortcut).

    Returns:
        The figures written to demo.json, as a dict.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = demo_model.load()
    images, labels, masks = (torch.from_numpy(a) for a in _balanced(count, seed))
    x = demo_model.normalize(images)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    shares, heatmaps = {}, {}
    for name in composites:
        explanation = LRP(model, name, **_composite_parameters(name))(x)  # the predicted class
        shares[name] = positive_share_in_mask(explanation.relevance, masks).tolist()
        heatmaps[name] = viz.heatmap(explanation.relevance, cmap="bwr")
    area = masks.flatten(1).float().mean(1).tolist()

    pictures = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    mask_pictures = np.repeat((masks.numpy()[..., None] * 255).astype(np.uint8), 3, axis=-1)
    cells = [[pictures[i], mask_pictures[i]] + [heatmaps[name][i] for name in composites] for i in range(count)]
    titles = [[f"{KINDS[int(labels[i])]} (predicted {KINDS[int(predicted[i])]})", f"object: {area[i]:.0%} of image"]
              + [f"{shares[name][i]:.0%} in object" for name in composites] for i in range(count)]
    viz.grid(cells, titles, column_titles=["input", "deciding object"] + list(composites),
             path=out / "demo.png", cell_size=2.2,
             suptitle="relevance for the predicted class (red: for, blue: against); % = positive relevance inside "
                      "the deciding object")

    result = {
        "composites": list(composites), "seed": seed,
        "images": [{"label": KINDS[int(labels[i])], "predicted": KINDS[int(predicted[i])], "object_area": area[i],
                    "positive_relevance_in_object": {name: shares[name][i] for name in composites}}
                   for i in range(count)],
        "mean_positive_relevance_in_object": {name: float(np.mean(shares[name])) for name in composites},
        "mean_object_area": float(np.mean(area)),
    }
    if shortcut:
        from . import shortcut as clever_hans

        result["shortcut"] = clever_hans.run(out)
    viz.save_text(json.dumps(result, indent=2) + "\n", out / "demo.json")
    viz.save_text(_page(result), out / "index.html")
    return result


def _page(result: dict) -> str:
    names = result["composites"]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    rows = []
    for i, image in enumerate(result["images"]):
        cells = "".join(f"<td>{image['positive_relevance_in_object'][name]:.0%}</td>" for name in names)
        rows.append(f"<tr><td>{i}</td><td>{html.escape(image['label'])}</td><td>{html.escape(image['predicted'])}"
                    f"</td><td>{image['object_area']:.1%}</td>{cells}</tr>")
    means = "".join(f"<td><b>{result['mean_positive_relevance_in_object'][name]:.0%}</b></td>" for name in names)
    rows.append(f"<tr><td colspan=\"3\"><b>mean</b></td><td>{result['mean_object_area']:.1%}</td>{means}</tr>")
    style = ("<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
             "img{max-width:100%}</style>")
    body = f"""{style}
<h1>relprop demo: does relevance land on the deciding object?</h1>
<p>Each image shows grey distractor shapes and one coloured shape. The class is the kind of the coloured shape
(circle, square, triangle or cross), so only that object's pixels decide it. A small CNN shipped with relprop
was trained on such images; each column after the mask is its LRP heatmap for the predicted class under one
composite (red: evidence for the class, blue: against).</p>
<p><img src="demo.png" alt="inputs, deciding-object masks and heatmaps per composite"></p>
<h2>Share of positive relevance inside the deciding object</h2>
<p>The object covers only the area in the fourth column; relevance spread evenly would score that much.</p>
<table>
<tr><th>image</th><th>class</th><th>predicted</th><th>object area</th>{header}</tr>
{chr(10).join(rows)}
</table>{_shortcut_section(result.get("shortcut"))}"""
    return viz.page(body, title="relprop demo")


def _shortcut_section(found: dict | None) -> str:
    if found is None:
        return ""
    kind = html.escape(KINDS[found["class"]])
    return f"""
<h2>Finding a planted shortcut in a whole data set (SpRAy)</h2>
<p>A second model was trained on shapes where {MARKED:.0%} of the {kind} images carry a small checkerboard in the
bottom-right corner (and {ELSEWHERE:.0%} of the other images): a "Clever Hans" shortcut, like the copyright tag on PASCAL VOC's
horse images. The demo explained {found["samples"]} such images into an explanation store
(<code>relprop run demo-watermark:{found["samples"]}</code>) and clustered the {found["explained"]} {kind} heatmaps
by Spectral Relevance Analysis (<code>relprop spray</code>, its defaults). In the clustering it shows first
({found["clustering"]}, the most separated), one cluster of {found["cluster_size"]} samples holds the marked images:
<b>purity {found["purity"]:.0%}, recall {found["recall"]:.0%}</b> of the
{found["marked"]} marked {kind} images (checked against the known truth; the eigengap suggests
{found["eigengap_suggests"]} strategies).</p>
<p><a href="{html.escape(found["report"])}">Open the SpRAy report</a>: the spectrum, the embedding (click a point
to see its sample and heatmap) and each cluster's mean heatmap.</p>{correction.section(found.get("correction"))}"""


def describe(result: dict) -> str:
    """The demo's numbers as text for the terminal.

    Args:
        result: What run() returned.

    Returns:
        The text.
    """
    names = result["composites"]
    width = max(len(name) for name in names)
    lines = [f"{'image':<6}{'class':<10}{'predicted':<11}{'area':>6}  "
             + "  ".join(name.rjust(width) for name in names)]
    for i, image in enumerate(result["images"]):
        lines.append(f"{i:<6}{image['label']:<10}{image['predicted']:<11}{image['object_area']:>6.1%}  "
                     + "  ".join(f"{image['positive_relevance_in_object'][n]:>{width}.1%}" for n in names))
    lines.append(f"{'mean':<27}{result['mean_object_area']:>6.1%}  "
                 + "  ".join(f"{result['mean_positive_relevance_in_object'][n]:>{width}.1%}" for n in names))
    text = "share of positive relevance inside the deciding object:\n" + "\n".join(lines)
    found = result.get("shortcut")
    if found is not None:
        text += (f"\nplanted shortcut: SpRAy put {found['cluster_size']} of {found['explained']} "
                 f"{KINDS[found['class']]} heatmaps in a cluster of their own ({found['clustering']}): "
                 f"purity {found['purity']:.0%}, recall {found['recall']:.0%} of the {found['marked']} watermarked "
                 "ones; report in "
                 f"{found['report']}")
        if found.get("correction"):
            text += "\n" + correction.describe(found["correction"])
    return text
