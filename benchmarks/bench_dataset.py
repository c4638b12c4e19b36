"""Throughput of `relprop run` (the store, data loading, resumability) against bare explanation and plain loops.

    .venv/bin/python benchmarks/bench_dataset.py            # demo:512 and ResNet-50 (8 images at 224), Ray vs local
    .venv/bin/python benchmarks/bench_dataset.py --quick    # a smoke run: fewer samples, one round

For each model, in one process and interleaved rounds (the median is reported, so drifting load on a shared machine
touches every variant alike):
- bare: relprop LRP on batches already in memory, nothing read or written (the floor);
- relprop run: datasets.run(...) into a fresh store (reading, explaining, writing, done flags);
- zennit loop / captum loop: the loop a user writes by hand: read the samples, explain with the peer, write
  relevance, output, label and done flags into a Zarr store chunked the same way.
Then --engine ray with 2 actors against --engine local on the demo data (Ray's start-up shown apart), the arithmetic
for ImageNet train (1.28M images): time per image, store size per --keep, and (--parts nodes) --engine ray on a
cluster of separate processes: a head without CPUs and 1, then 2 worker nodes of 1 CPU each.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
import zarr

import relprop
import relprop.datasets as datasets
from relprop.datasets.sources import Source, Sample
from relprop.demo import load

IMAGENET_TRAIN = 1_281_167


class RandomImages(Source):
    """count random 224x224 images with labels, read one at a time like an image folder (no disk)."""

    def __init__(self, count: int, classes: int = 1000):
        self.count, self.classes, self.spec = count, classes, f"random:{count}"

    def __len__(self):
        return self.count

    def read(self, index):
        generator = torch.Generator().manual_seed(index)
        pixels = torch.rand(3, 224, 224, generator=generator)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        return Sample((pixels - mean) / std, index % self.classes, pixels)


def resnet50():
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    with torch.no_grad():  # random init has zero biases; give them some, as a trained model has
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
    return model


def batches(source: Source, batch_size: int):
    samples = [source.read(i) for i in range(len(source))]
    for first in range(0, len(samples), batch_size):
        part = samples[first:first + batch_size]
        yield torch.stack([s.x for s in part]), torch.tensor([s.label for s in part])


def bare(model, source, batch_size):
    prepared = list(batches(source, batch_size))
    attributor = relprop.LRP(model, "epsilon_plus_flat")

    def go():
        for x, labels in prepared:
            attributor(x, labels)
    return go


def relprop_run(model, source, batch_size, folder: Path):
    def go():
        path = Path(tempfile.mkdtemp(dir=folder)) / "run.zarr"
        datasets.run(model, source, path, batch_size=batch_size, progress=False)
    return go


def plain_loop(explain, source, batch_size, classes, folder: Path):
    """Read, explain, write chunk by chunk into a Zarr store, as a hand-written loop does."""
    def go():
        path = Path(tempfile.mkdtemp(dir=folder)) / "loop.zarr"
        group = zarr.open_group(str(path), mode="w")
        count, shape = len(source), tuple(source.read(0).x.shape)
        relevance = group.create_array("relevance", shape=(count, *shape), chunks=(batch_size, *shape),
                                       dtype="float32")
        output = group.create_array("output", shape=(count, classes), chunks=(batch_size, classes), dtype="float32")
        label = group.create_array("label", shape=(count,), chunks=(batch_size,), dtype="int64")
        done = group.create_array("done", shape=(count,), chunks=(batch_size,), dtype="bool")
        for first in range(0, count, batch_size):
            samples = [source.read(i) for i in range(first, min(first + batch_size, count))]
            x, labels = torch.stack([s.x for s in samples]), torch.tensor([s.label for s in samples])
            scores, heat = explain(x, labels)
            stop = first + len(samples)
            relevance[first:stop] = heat.detach().numpy()
            output[first:stop] = scores.detach().numpy()
            label[first:stop] = labels.numpy()
            done[first:stop] = True
    return go


def zennit_explain(model, classes):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    canonizers = [ResNetCanonizer()] if isinstance(model, torchvision.models.ResNet) else []
    composite = EpsilonPlusFlat(canonizers=canonizers)

    def explain(x, labels):
        with Gradient(model=model, composite=composite) as attributor:
            return attributor(x, torch.nn.functional.one_hot(labels, classes).float())
    return explain


def captum_explain(model):
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    attributor = LRP(model)

    def explain(x, labels):
        for module in model.modules():  # captum has no rule for adaptive max-pooling, and drops rules after a call
            if isinstance(module, torch.nn.AdaptiveMaxPool2d):
                module.rule = EpsilonRule()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            heat = attributor.attribute(x, target=labels)
        with torch.no_grad():
            return model(x), heat
    return explain


def timed(variants: dict, rounds: int) -> dict:
    """name -> (median wall seconds, median CPU seconds of this process, all its threads)."""
    times = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # each round starts elsewhere
            go = variants[name]
            began, cpu = time.perf_counter(), time.process_time()
            go()
            times[name].append((time.perf_counter() - began, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
            for name, values in times.items()}


def compare(title, model, source, batch_size, classes, rounds, folder):
    variants = {"bare relprop LRP (in memory)": bare(model, source, batch_size),
                "relprop run (store)": relprop_run(model, source, batch_size, folder),
                "zennit loop (store)": plain_loop(zennit_explain(model, classes), source, batch_size, classes, folder),
                "captum loop (store)": plain_loop(captum_explain(model), source, batch_size, classes, folder)}
    relprop_run(model, source, batch_size, folder)()  # warm-up: first calls pay for allocations and imports
    seconds = timed(variants, rounds)
    wall_floor, cpu_floor = seconds["bare relprop LRP (in memory)"]
    print(f"\n{title}: {len(source)} samples, batch {batch_size}, median of {rounds} rounds")
    print(f"{'variant':30s} {'wall s':>7s} {'samples/s':>10s} {'vs bare':>8s} {'CPU s':>7s} {'vs bare':>8s}")
    for name, (wall, cpu) in seconds.items():
        print(f"{name:30s} {wall:7.2f} {len(source) / wall:10.1f} {wall / wall_floor:7.2f}x {cpu:7.2f} "
              f"{cpu / cpu_floor:7.2f}x")
    return seconds


def ray_versus_local(count, batch_size, folder):
    import ray

    began = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=128 * 2 ** 20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    startup = time.perf_counter() - began
    ray.shutdown()
    results = {}
    for engine in ("local", "ray"):
        path = Path(tempfile.mkdtemp(dir=folder)) / f"{engine}.zarr"
        began = time.perf_counter()
        datasets.run("demo", f"demo:{count}", path, batch_size=batch_size, engine=engine,
                     workers=2 if engine == "ray" else 1, progress=False)
        results[engine] = time.perf_counter() - began
    print(f"\nRay (2 actors, Ray started and stopped by the run) vs local, demo:{count}, batch {batch_size}")
    for engine, value in results.items():
        print(f"{engine:8s} {value:7.2f} s  {count / value:7.1f} samples/s")
    print(f"ray.init + shutdown alone: {startup:.2f} s")
    return results


def ray_nodes(count, batch_size, folder):
    """samples/s of `relprop run --engine ray --address` with 1 and 2 worker nodes (one actor each) on this machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.datasets.helpers import Node, free_port, wait_for_cpus

    # token authentication said explicitly, with a token of its own, for the nodes and this driver alike
    # (docs/how-to/cluster-runs.md, "Token authentication")
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    address, temp = f"127.0.0.1:{free_port()}", tempfile.mkdtemp(prefix="relprop-ray-", dir="/tmp")
    nodes = [Node(["--head", "--port", address.rsplit(":", 1)[1], "--temp-dir", temp, "--include-dashboard=false"],
                  env, folder / "head.log", cpus=0)]
    results = {}
    try:
        for workers in (1, 2):
            nodes.append(Node(["--address", address], env, folder / f"worker-{workers}.log"))
            wait_for_cpus(address, workers, nodes, env)
            path = Path(tempfile.mkdtemp(dir=folder)) / "nodes.zarr"
            began = time.perf_counter()
            datasets.run("demo", f"demo:{count}", path, batch_size=batch_size, chunk=batch_size, engine="ray",
                         address=address, progress=False)
            results[workers] = time.perf_counter() - began
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)
    print(f"\nRay cluster on this machine (head without CPUs, worker nodes of 1 CPU), demo:{count}, batch and chunk "
          f"{batch_size}, joining included")
    for workers, value in results.items():
        print(f"{workers} worker node(s) {value:7.2f} s  {count / value:7.1f} samples/s")
    return results


def arithmetic(per_image_s: float, compressed_ratio: float):
    print(f"\nImageNet train ({IMAGENET_TRAIN:,} images), ResNet-50 at 224:")
    hours = IMAGENET_TRAIN * per_image_s / 3600
    print(f"this machine (2 shared cores, {per_image_s:.3f} s/image): {hours:,.0f} hours")
    print("on N GPUs at T images/s each: 1.28M / (N * T) seconds, e.g. N=8, T=500: "
          f"{IMAGENET_TRAIN / (8 * 500) / 60:.0f} minutes")
    values = 3 * 224 * 224
    for keep, raw in (("full", values * 4), ("float16", values * 2), ("channels", 224 * 224 * 4)):
        total = IMAGENET_TRAIN * raw
        print(f"--keep {keep:8s}: {raw / 1024:6.0f} KiB/image raw, {total / 1e9:6.0f} GB raw, "
              f"~{total * compressed_ratio / 1e9:6.0f} GB at the measured zstd ratio {compressed_ratio:.2f}; "
              f"at 500 images/s per GPU the store takes {500 * raw * compressed_ratio / 1e6:.0f} MB/s per GPU")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    parser.add_argument("--parts", default="demo,resnet,ray",
                        help="which comparisons, e.g. resnet or demo,ray; nodes: Ray with 1 and 2 worker nodes")
    arguments = parser.parse_args()
    rounds, demo_count, resnet_count = (1, 64, 4) if arguments.quick else (3, 512, 8)
    torch.set_num_threads(arguments.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; the machine is shared with other jobs")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        parts = arguments.parts.split(",")
        if "demo" in parts:
            compare("demo model (ShapeNet, 32x32)", load(), datasets.open_source(f"demo:{demo_count}"), 32, 4,
                    rounds, folder)
        if "resnet" in parts:
            model, source = resnet50(), RandomImages(resnet_count)
            seconds = compare("ResNet-50 (random init), 224x224", model, source, 4, 1000, rounds, folder)
            path = Path(tempfile.mkdtemp(dir=folder)) / "r.zarr"
            datasets.run(model, source, path, batch_size=4, progress=False)
            relevance = zarr.open_group(str(path))["relevance"]
            stored = sum(f.stat().st_size for f in (path / "relevance").rglob("*") if f.is_file())
            arithmetic(seconds["relprop run (store)"][0] / resnet_count, stored / (relevance.size * 4))
        if "ray" in parts and not arguments.no_ray:
            ray_versus_local(demo_count, 32, folder)
        if "nodes" in parts and not arguments.no_ray:
            ray_nodes(demo_count * 4, 32, folder)


if __name__ == "__main__":
    main()
