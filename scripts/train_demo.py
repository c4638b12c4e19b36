"""Regenerate the demo's image set and retrain its model, deterministically on CPU (seeded, fixed threads).

Writes src/relprop/demo/weights.safetensors and training.json (seeds, sizes and the accuracy reached on a test
set generated from its own seed; tests/demo/test_showcase.py checks the shipped weights still reach it). With
``--data watermark`` it trains on the "Clever Hans" variant (relprop.demo.watermark) instead and writes
watermark.safetensors and watermark.json; no mirroring then, since the mark sits in one corner.
    .venv/bin/python scripts/train_demo.py [--data shapes|watermark] [--epochs N] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from relprop.demo import model as demo_model
from relprop.demo import shapes, watermark

TRAIN_SEED, TEST_SEED, TORCH_SEED = 1, 2, 0


def accuracy(model, images, labels, batch=500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = model(demo_model.normalize(images[start:start + batch]))
            correct += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return correct / len(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["shapes", "watermark"], default="shapes")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=demo_model.WEIGHTS.parent)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one thread: a fixed reduction order, and no slowdown when other work shares the CPU
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(TORCH_SEED)
    started = time.time()
    source = shapes if args.data == "shapes" else watermark
    images, labels = source.generate(args.train_size, TRAIN_SEED)[:2]
    test_images, test_labels = source.generate(args.test_size, TEST_SEED)[:2]
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    test_images, test_labels = torch.from_numpy(test_images), torch.from_numpy(test_labels)

    model = demo_model.ShapeNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.5e-3)
    steps_per_epoch = (len(images) + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1.5e-3, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(TORCH_SEED)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), 64):
            batch = order[start:start + 64]
            x = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5  # mirror: every kind is left-right symmetric
            if args.data == "shapes":
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            loss = torch.nn.functional.cross_entropy(model(demo_model.normalize(x)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(images):.4f}, "
              f"test accuracy {accuracy(model, test_images, test_labels):.4f}", flush=True)

    test_accuracy = accuracy(model, test_images, test_labels)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / (demo_model.WEIGHTS if args.data == "shapes" else watermark.WEIGHTS).name
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights) + ".tmp")
    os.replace(str(weights) + ".tmp", weights)
    record = {"data": args.data, "train_seed": TRAIN_SEED, "test_seed": TEST_SEED, "torch_seed": TORCH_SEED,
              "train_size": args.train_size, "test_size": args.test_size, "epochs": args.epochs,
              "test_accuracy": round(test_accuracy, 4), "torch": torch.__version__,
              "seconds": round(time.time() - started, 1)}
    (args.out / (demo_model.TRAINING if args.data == "shapes" else watermark.TRAINING).name).write_text(json.dumps(record, indent=2) + "\n")
    print(f"test accuracy {test_accuracy:.4f}; wrote {weights} ({weights.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
