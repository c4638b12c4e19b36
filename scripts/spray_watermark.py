"""Explain the watermark class of the "Clever Hans" demo data into a store, run SpRAy on it, and take the report's
picture for docs/how-to/datasets.md (docs/spray-report.png); the store is written as `relprop run
demo-watermark:COUNT --model demo-watermark` writes it. (`relprop demo` does the same at a smaller count.)
    OMP_NUM_THREADS=1 .venv/bin/python scripts/spray_watermark.py [--count 1200] [--out DIR]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from relprop import datasets
from relprop.analysis import pages, spray
from relprop.demo import watermark
from relprop.tour.shortcut import marked_cluster

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1200, help="generated images (about a quarter are crosses)")
    parser.add_argument("--out", type=Path, default=Path("spray-watermark"))
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "spray-report.png")
    args = parser.parse_args()
    torch.set_num_threads(1)

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "run.zarr"
    datasets.run("demo-watermark", f"demo-watermark:{args.count}", store, composite="epsilon_plus_flat",
                 target="label", overwrite=store.exists())
    explained = datasets.open_store(store)
    result = spray.run(store, classes=[watermark.CLASS])  # the defaults of `relprop spray`
    analysis = result[f"class-{watermark.CLASS}"]
    truth = np.asarray(explained["extra/watermark"][:], dtype=bool)[analysis.index]
    for name, clusters in analysis.clusters.items():
        shares = {int(c): f"{truth[clusters == c].mean():.2f}" for c in sorted(set(clusters.tolist()))}
        print(f"{name}: share of marked samples per cluster {shares}")
    found, purity, recall = marked_cluster(analysis.clusters[analysis.chosen], truth)
    print(f"{analysis.chosen} (the most separated, conductance {analysis.conductance[analysis.chosen]:.3f}): purity "
          f"{purity:.3f}, recall {recall:.3f} ({truth.sum()} of {len(truth)} crosses marked); eigengap suggests "
          f"{analysis.suggested}")
    page = pages.write(store, args.out / "report")
    print(f"wrote {page}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser:
        sample = int(np.flatnonzero(found & truth)[0])
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--allow-file-access-from-files", "--virtual-time-budget=5000", "--window-size=1280,1100",
                        f"--screenshot={args.picture.resolve()}", page.resolve().as_uri() + f"#sample={sample}"],
                       check=True, capture_output=True, timeout=120)
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
