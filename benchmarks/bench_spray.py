"""SpRAy at scale: time and peak memory of `relprop.analysis.spray.run` on N stored heatmaps of one class.

The heatmaps are synthetic with planted structure (the store's `relprop run` is not needed to make 100k of them):
each is a 32x32 map (keep=channels) of noise plus one of three strategies, a blob of relevance at a fixed place
(60%, 30% and 10% of the samples), moved by up to 3 pixels (uniformly, continuous). Each N is analysed in a fresh process (peak RSS is
that process's ru_maxrss minus what it held after imports) with the CLI's defaults: 10 neighbours, 32 eigenvalues,
8x8 pooling, k-means for k = 2..5, the spectral picture; t-SNE is timed separately since it dominates.
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_spray.py [--sizes 10000,30000,100000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STRATEGIES = ((0.6, (8, 8)), (0.3, (22, 22)), (0.1, (6, 24)))  # share of samples, blob centre (row, column)


def write_store(path: Path, count: int, chunk: int = 2000, seed: int = 0) -> np.ndarray:
    """A store per the layout (version 1) with `count` planted heatmaps of class 0; returns the strategies."""
    import zarr

    rng = np.random.default_rng(seed)
    strategy = rng.choice(len(STRATEGIES), count, p=[share for share, _ in STRATEGIES])
    root = zarr.open_group(str(path), mode="w")
    relevance = root.create_array("relevance", shape=(count, 32, 32), dtype="float32", chunks=(chunk, 32, 32))
    y, x = np.mgrid[0:32, 0:32]
    for start in range(0, count, chunk):
        part = strategy[start:start + chunk]
        centres = np.array([STRATEGIES[s][1] for s in part]) + rng.uniform(-3, 3, (len(part), 2))
        blobs = np.exp(-((y - centres[:, :1, None]) ** 2 + (x - centres[:, 1:, None]) ** 2) / 8.0)
        relevance[start:start + len(part)] = (blobs + rng.normal(0, 0.05, blobs.shape)).astype(np.float32)
    for name, data in (("label", np.zeros(count, np.int64)), ("target", np.zeros(count, np.int64)),
                       ("output", np.ones((count, 2), np.float32)), ("done", np.ones(count, bool))):
        root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(chunk, *data.shape[1:]))[:] = data
    root.attrs.update({"relprop_store": 1, "count": count, "chunk": chunk, "classes": 2, "keep": "channels",
                       "input_shape": [1, 32, 32], "model": "synthetic", "method": "lrp"})
    return strategy


def measure(store: str, embeddings: list[str]) -> dict:
    """Run in a fresh process: analyse the store, report seconds, peak memory and how well strategies were found."""
    from sklearn.metrics import adjusted_rand_score

    from relprop.analysis import spray

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = spray.run(store, classes=[0], clusters=range(2, 6), embeddings=tuple(embeddings),
                       algorithms=("kmeans",))["class-0"]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    truth = np.load(Path(store) / "strategy.npy")
    return {"seconds": round(seconds, 1), "peak_mib": round(peak / 1024, 1), "suggested": result.suggested,
            "ari_kmeans_3": round(float(adjusted_rand_score(truth, result.clusters["kmeans-3"])), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--tsne", default="10000", help="sizes at which t-SNE is timed as well")
    parser.add_argument("--measure", nargs=2, metavar=("STORE", "EMBEDDINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], [e for e in args.measure[1].split(",") if e])))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in [int(n) for n in args.sizes.split(",")]:
            store = Path(folder) / f"n{count}.zarr"
            np.save(store.parent / "strategy.npy", write_store(store, count))
            os.replace(store.parent / "strategy.npy", store / "strategy.npy")
            runs = [("spectral", "spectral")] + ([("spectral,tsne", "spectral+tsne")]
                                                  if str(count) in args.tsne.split(",") else [])
            for embeddings, label in runs:
                output = subprocess.run([sys.executable, __file__, "--measure", str(store), embeddings],
                                        capture_output=True, text=True, check=True).stdout
                row = {"n": count, "embeddings": label, **json.loads(output.strip().splitlines()[-1]),
                       "dense_matrix_gib": round(count * count * 8 / 2**30, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| N | embeddings | seconds | peak MiB | dense N x N float64 | eigengap suggests | ARI (k-means, k=3) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']:,} | {row['embeddings']} | {row['seconds']} | {row['peak_mib']} | "
              f"{row['dense_matrix_gib']} GiB | {row['suggested']} | {row['ari_kmeans_3']} |")


if __name__ == "__main__":
    main()
