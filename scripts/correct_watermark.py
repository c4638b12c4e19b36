"""What each ClArC method gives on the demo's watermark model (docs/how-to/clarc.md).

The CAV comes from the marked and unmarked crosses of ``demo-watermark`` images (seed 11; the cluster SpRAy finds
holds exactly the marked ones); the corrections are measured on 1000 other images (seed 5) with the known truth:
clean accuracy on the images without any mark, and artifact sensitivity as the rise of the cross logit when the
mark is painted into the same images. Usage: ``python scripts/correct_watermark.py [METHOD[:LAYER[:OPTION=VALUE,...]]]
...`` (default: every method with the settings docs/how-to/clarc.md reports; ``--sweep``: P-ClArC at several
layers with both CAV kinds and poolings).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

from relprop import correct
from relprop.correct.finetune import finetune
from relprop.demo import model as demo, watermark

LAYERS = ("features.4", "features.6", "features.9", "pool")
SWEEP = [f"p-clarc:{layer}:kind={kind},pooling={pooling}" for layer in LAYERS for kind in ("pattern", "filter")
         for pooling in ("none", "mean")]
DEFAULTS = ["p-clarc:features.9", "a-clarc:features.7:lr=0.01,epochs=5,train=after",
            "rr-clarc:features.9:lr=0.001,penalty=100,epochs=3,train=all"]


def images(count, seed):
    pixels, labels, _, marked = watermark.generate(count, seed)
    return demo.normalize(torch.from_numpy(pixels)), torch.from_numpy(labels), torch.from_numpy(marked)


def main(plans):
    torch.manual_seed(0)
    model = watermark.load()
    x, y, marked = images(2000, 11)
    clean_pixels, test_labels, _ = watermark.unmarked(1000, 5)
    painted = clean_pixels.copy()
    for image in painted:
        watermark.paint_mark(image)
    clean, with_mark = demo.normalize(torch.from_numpy(clean_pixels)), demo.normalize(torch.from_numpy(painted))
    test_labels = torch.from_numpy(test_labels)
    cross = y == watermark.CLASS

    def figures(net):
        return {"clean_accuracy": correct.accuracy(net, clean, test_labels),
                "artifact_sensitivity": float(correct.artifact_sensitivity(net, clean, with_mark,
                                                                           watermark.CLASS).mean())}

    before = figures(model)
    print(json.dumps({"before": before}), flush=True)
    for plan in plans:
        method, layer, *rest = plan.split(":")
        options = dict(item.split("=") for item in rest[0].split(",")) if rest else {}
        started = time.perf_counter()
        cav_options = {key: options.pop(key) for key in ("kind", "pooling") if key in options}
        cav = correct.from_inputs(model, x[cross & marked], x[cross & ~marked], layer, **cav_options)
        if method == "p-clarc":
            fixed = correct.p_clarc(model, cav)
        else:
            kwargs = {key: (value if key == "train" else float(value) if "." in value or "e" in value
                            else int(value)) for key, value in options.items()}
            with tempfile.TemporaryDirectory() as folder:
                fixed = finetune(model, x, y, cav, method, folder, **kwargs)
        after = figures(fixed)
        drop = 1 - after["artifact_sensitivity"] / before["artifact_sensitivity"]
        print(json.dumps({"method": plan, **after, "sensitivity_drop": round(drop, 4),
                          "clean_accuracy_change_pp": round(100 * (after["clean_accuracy"]
                                                                   - before["clean_accuracy"]), 2),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main(SWEEP if sys.argv[1:] == ["--sweep"] else sys.argv[1:] or DEFAULTS)
