"""Does SpRAy find shortcuts it was not tuned on? Plant one, train a model that learns it, explain, and check.

Beside the demo's watermark (a 6x6 checkerboard in the bottom-right corner of 80% of the crosses), each variant
paints another mark (shape, size, position, colour) into 80% of one class of relprop.demo.watermark's faint shapes
(and 1% of the others), trains the demo's ShapeNet on them (seeded, one thread), checks that the model leans on the
mark (the target logit drops when it is removed), explains the marked class's images of a fresh set with
epsilon_plus_flat and runs SpRAy on them twice: with the command's defaults (`relprop spray STORE` as users run
it) and as the defaults were before (size 8, power 1, k-means with the k of the largest absolute eigengap).
Printed per variant: the clustering shown first, its conductance, and the purity and recall of its cluster holding
the most marked samples.
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_spray_shortcuts.py [--train 4000 --epochs 4]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import relprop
from relprop.analysis import spray
from relprop.demo import model as demo_model
from relprop.demo import watermark
from relprop.tour.shortcut import marked_cluster

# name: (class marked, top row, left column, pattern (rows of 0/1; 1 takes the colour, 0 black), colour RGB)
MARKS = {
    "demo checkerboard 6x6 bottom-right, cross": (3, 25, 25, (np.indices((6, 6)).sum(0) % 2), (1.0, 1.0, 1.0)),
    "red square 4x4 top-left, circle": (0, 1, 1, np.ones((4, 4)), (1.0, 0.0, 0.0)),
    "green bar 2x9 left edge, square": (1, 15, 0, np.ones((2, 9)), (0.0, 1.0, 0.0)),
    "white ring 5x5 top middle, triangle": (2, 0, 13, np.pad(np.zeros((3, 3)), 1, constant_values=1), (1.0, 1.0, 1.0)),
    "blue checkerboard 3x3 bottom-left, cross": (3, 28, 1, (np.indices((3, 3)).sum(0) % 2), (0.2, 0.4, 1.0)),
}


def marked_images(count: int, seed: int, mark) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, marked) of the faint shapes with the mark painted as watermark.generate paints its own."""
    target, top, left, pattern, colour = mark
    images, labels, _ = watermark.unmarked(count, seed)
    chance = np.random.default_rng([seed, 1]).uniform(size=count)
    marked = np.where(labels == target, chance < watermark.MARKED_SHARE, chance < watermark.ELSEWHERE_SHARE)
    pattern = np.asarray(pattern, dtype=np.float32)
    painted = np.asarray(colour, dtype=np.float32)[:, None, None] * pattern
    rows, columns = slice(top, top + pattern.shape[0]), slice(left, left + pattern.shape[1])
    images[np.ix_(np.flatnonzero(marked), np.arange(3), np.arange(top, top + pattern.shape[0]),
                  np.arange(left, left + pattern.shape[1]))] = painted
    assert images[:, :, rows, columns].shape[2:] == pattern.shape
    return images, labels, marked


def train(images: np.ndarray, labels: np.ndarray, epochs: int) -> demo_model.ShapeNet:
    """The demo's ShapeNet trained as scripts/train_demo.py trains it (Adam, one-cycle, batch 64, seeded)."""
    torch.manual_seed(0)
    model = demo_model.ShapeNet()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.5e-3)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1.5e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            loss = torch.nn.functional.cross_entropy(model(demo_model.normalize(x[batch])), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def judge(features: np.ndarray, marked: np.ndarray, **settings) -> dict:
    result = spray.analyse(features, np.arange(len(features)), "class", embeddings=(), algorithms=("kmeans",),
                           **settings)
    _, purity, recall = marked_cluster(result.clusters[result.chosen], marked)
    return {"chosen": result.chosen, "suggested": result.suggested,
            "conductance": round(result.conductance[result.chosen], 3), "purity": round(purity, 3),
            "recall": round(recall, 3)}


def judge_before(features: np.ndarray, marked: np.ndarray) -> dict:
    """The command's defaults before: power 1, k = the largest absolute eigengap, k-means with that k."""
    values, vectors = spray.smallest_eigenpairs(spray.knn_affinity(features, 10), 32)
    k = max(2, int(np.argmax(np.diff(values[:11]))) + 1)
    _, purity, recall = marked_cluster(spray.kmeans(vectors, k), marked)
    return {"chosen": f"kmeans-{k}", "purity": round(purity, 3), "recall": round(recall, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--explain", type=int, default=1600, help="fresh images, of which the marked class is analysed")
    parser.add_argument("--only", default=None, help="run the variants whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, mark in MARKS.items():
        if args.only and args.only not in name:
            continue
        started = time.perf_counter()
        images, labels, _ = marked_images(args.train, 1, mark)
        model = train(images, labels, args.epochs)
        fresh, fresh_labels, marked = marked_images(args.explain, 5, mark)
        target = mark[0]
        ours = np.flatnonzero(fresh_labels == target)
        x = demo_model.normalize(torch.from_numpy(fresh[ours]))
        clean = demo_model.normalize(torch.from_numpy(watermark.unmarked(args.explain, 5)[0][ours]))
        with torch.no_grad():
            drop = (model(x)[:, target] - model(clean)[:, target])[torch.from_numpy(marked[ours])].mean().item()
            accuracy = (model(x).argmax(1) == target).float().mean().item()
        relevance = relprop.explain(model, x, target=target, composite="epsilon_plus_flat").relevance.numpy()
        truth = marked[ours]
        row = {"variant": name, "samples": len(ours), "marked": int(truth.sum()),
               "logit drop without the mark": round(drop, 2), "accuracy on the class": round(accuracy, 3),
               "defaults": judge(spray.pool(relevance, 3, 0.5), truth),
               "before": judge_before(spray.pool(relevance, 8, 1.0), truth),
               "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
