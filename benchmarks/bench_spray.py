"""SpRAy at scale: time and peak memory of `relprop spray STORE --classes 0` as users run it, on N stored heatmaps.

The heatmaps are synthetic with planted structure (the store's `relprop run` is not needed to make 100k of them):
each is a 32x32 map (keep=channels) of noise plus one of four strategies, a blob of relevance at a fixed place
(40%, 30%, 20% and 10% of the samples), moved by up to 3 pixels (uniformly, continuous), times a per-map scale
in [0.5, 2]. Each N runs the command with its defaults (its report included) in a fresh process under
/usr/bin/time (wall and CPU seconds, peak resident memory of the whole process, imports included); then the adjusted
Rand index of the clustering the command chose (the one its report opens on) against the planted strategies.

With --corelay PYTHON (an environment with CoRelAy, e.g. `python3.11 -m venv .venv-corelay &&
.venv-corelay/bin/pip install corelay`), CoRelAy's SpectralClustering pipeline with its defaults (SciPyPDist,
SparseKNN(10), SymmetricNormalLaplacian, EigenDecomposition(32)) and KMeans(3) (marked as its output) runs on
the same pooled features as relprop's analysis alone (features -> k-means, k = 3), both in fresh processes, at
--corelay-sizes (on the earlier three strategies, 60/30/10%, which the CoRelAy table of docs/benchmarks.md was
measured on).
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_spray.py [--sizes 10000,30000,100000]
        [--corelay .venv-corelay/bin/python --corelay-sizes 10000,20000]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# share of samples, blob centre (row, column)
STRATEGIES = ((0.4, (8, 8)), (0.3, (22, 22)), (0.2, (6, 24)), (0.1, (24, 6)))
CORELAY_STRATEGIES = ((0.6, (8, 8)), (0.3, (22, 22)), (0.1, (6, 24)))


def write_store(path: Path, count: int, chunk: int = 2000, seed: int = 0, strategies=STRATEGIES) -> np.ndarray:
    """A store per the layout (version 1) with `count` planted heatmaps of class 0; returns the strategies."""
    import zarr

    rng = np.random.default_rng(seed)
    strategy = rng.choice(len(strategies), count, p=[share for share, _ in strategies])
    root = zarr.open_group(str(path), mode="w")
    relevance = root.create_array("relevance", shape=(count, 32, 32), dtype="float32", chunks=(chunk, 32, 32))
    y, x = np.mgrid[0:32, 0:32]
    for start in range(0, count, chunk):
        part = strategy[start:start + chunk]
        centres = np.array([strategies[s][1] for s in part]) + rng.uniform(-3, 3, (len(part), 2))
        blobs = np.exp(-((y - centres[:, :1, None]) ** 2 + (x - centres[:, 1:, None]) ** 2) / 8.0)
        scale = rng.uniform(0.5, 2.0, (len(part), 1, 1)) if strategies is STRATEGIES else 1.0
        relevance[start:start + len(part)] = ((blobs + rng.normal(0, 0.05, blobs.shape)) * scale).astype(np.float32)
    for name, data in (("label", np.zeros(count, np.int64)), ("target", np.zeros(count, np.int64)),
                       ("output", np.ones((count, 2), np.float32)), ("done", np.ones(count, bool))):
        root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(chunk, *data.shape[1:]))[:] = data
    root.attrs.update({"relprop_store": 1, "count": count, "chunk": chunk, "classes": 2, "keep": "channels",
                       "input_shape": [1, 32, 32], "model": "synthetic", "method": "lrp"})
    return strategy


def measure_command(store: Path, truth: np.ndarray, extra=()) -> dict:
    """`relprop spray STORE --classes 0` in a fresh process under /usr/bin/time; the chosen clustering's ARI."""
    from sklearn.metrics import adjusted_rand_score

    from relprop.analysis import spray

    command = ["/usr/bin/time", "-f", "%e %U %S %M", sys.executable, "-m", "relprop", "spray", str(store),
               "--classes", "0", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, user, system, kib = done.stderr.strip().splitlines()[-1].split()
    result = spray.read(store, "class-0")
    return {"seconds": float(seconds), "cpu_seconds": round(float(user) + float(system), 1),
            "peak_mib": round(int(kib) / 1024, 1), "suggested": result.suggested,
            "search": result.parameters.get("neighbor_search", "exact"), "eigenvalues": len(result.eigenvalues),
            "chosen": result.chosen, "ari": round(float(adjusted_rand_score(truth, result.clusters[result.chosen])), 4),
            "summary": done.stdout.strip().splitlines()[0]}


CORELAY = """
import json, resource, sys, time
import numpy as np
from sklearn.metrics import adjusted_rand_score
from corelay.pipeline.spectral import SpectralClustering
from corelay.processor.clustering import KMeans
features, truth = np.load(sys.argv[1]), np.load(sys.argv[2])
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
clusters = SpectralClustering(clustering=KMeans(n_clusters=3, is_output=True))(features)[-1]
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
print(json.dumps({"seconds": round(seconds, 1), "peak_mib": round(peak / 1024, 1),
                  "ari_kmeans_3": round(float(adjusted_rand_score(truth, clusters)), 4)}))
"""


def measure_features(features: str, truth: str) -> dict:
    """relprop's analysis alone on saved pooled features (the part CoRelAy's pipeline does), in a fresh process."""
    from sklearn.metrics import adjusted_rand_score

    from relprop.analysis import spray

    values, planted = np.load(features), np.load(truth)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = spray.analyse(values, np.arange(len(values)), "all", clusters=[3], embeddings=(), algorithms=("kmeans",))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    return {"seconds": round(seconds, 1), "peak_mib": round(peak / 1024, 1),
            "ari_kmeans_3": round(float(adjusted_rand_score(planted, result.clusters["kmeans-3"])), 4)}


def compare_with_corelay(python: str, sizes: list[int], folder: Path) -> list[dict]:
    from relprop.analysis import spray
    from relprop.datasets import store as stores

    rows = []
    for count in sizes:
        store = folder / f"c{count}.zarr"
        truth = write_store(store, count, strategies=CORELAY_STRATEGIES)
        root = stores.open_store(store).group
        features = spray.store_features(root, {"all": np.arange(count)}, 8)["all"]
        np.save(folder / "features.npy", features)
        np.save(folder / "truth.npy", truth)
        files = [str(folder / "features.npy"), str(folder / "truth.npy")]
        for name, command in (("relprop", [sys.executable, __file__, "--measure-features", *files]),
                              ("corelay", [python, "-c", CORELAY, *files])):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                row = {"n": count, "pipeline": name, "error": done.stderr.strip().splitlines()[-1]}
            else:
                row = {"n": count, "pipeline": name, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--extra", default="", help="further arguments for the command, e.g. --density")
    parser.add_argument("--corelay", default=None, help="python of an environment with CoRelAy, to compare with")
    parser.add_argument("--corelay-sizes", default="10000")
    parser.add_argument("--measure-features", nargs=2, metavar=("FEATURES", "TRUTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_features:
        print(json.dumps(measure_features(*args.measure_features)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if args.corelay:
            compared = compare_with_corelay(args.corelay, [int(n) for n in args.corelay_sizes.split(",")],
                                            Path(folder))
            print("\n| N | pipeline (same pooled features, k-means k = 3) | seconds | peak MiB | ARI |")
            print("|---|---|---|---|---|")
            for row in compared:
                print(f"| {row['n']:,} | {row['pipeline']} | {row.get('seconds', '-')} | {row.get('peak_mib', '-')} | "
                      f"{row.get('ari_kmeans_3', row.get('error'))} |")
        for count in [int(n) for n in args.sizes.split(",") if n]:
            store = Path(folder) / f"n{count}.zarr"
            truth = write_store(store, count)
            row = {"n": count, **measure_command(store, truth, args.extra.split()),
                   "dense_matrix_gib": round(count * count * 8 / 2**30, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| N | neighbour search | eigenpairs | wall s | CPU s | peak MiB | dense N x N float64 | eigengap suggests "
          "| chosen | ARI of the chosen |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']:,} | {row['search']} | {row['eigenvalues']} | {row['seconds']} | {row['cpu_seconds']} | "
              f"{row['peak_mib']} | {row['dense_matrix_gib']} GiB | "
              f"{row['suggested']} | {row['chosen']} | {row['ari']} |")


if __name__ == "__main__":
    main()
