"""Data sources for benchmark(): the demo's generated images with object masks, and image files.

Each has ``batches(batch_size)`` yielding benchmark.Batch objects, the interface an explanation store of
``relprop run`` can offer too.
"""
from __future__ import annotations

import torch

from .benchmark import Batch

# The demo benchmark's images: a seed the demo model was not trained on (training used 0 and 1, see
# demo/training.json).
DEMO_SEED = 2026


class DemoImages:
    """count generated images (relprop.demo.generate) with labels and the deciding object's mask, normalised."""

    def __init__(self, count: int = 64, seed: int = DEMO_SEED):
        from ..demo import generate, normalize

        images, labels, masks = generate(count, seed)
        self.x = normalize(torch.from_numpy(images))
        self.labels, self.masks = torch.from_numpy(labels), torch.from_numpy(masks)
        self.ids = [f"demo:{seed}:{i}" for i in range(count)]

    def __len__(self):
        return len(self.x)

    def batches(self, batch_size: int):
        for start in range(0, len(self.x), batch_size):
            end = start + batch_size
            yield Batch(self.x[start:end], self.labels[start:end], self.masks[start:end], self.ids[start:end])


class ImageFiles:
    """Image files read batch by batch through a model's preprocessing; no labels or masks (target: predicted)."""

    def __init__(self, files, preprocessing):
        self.files, self.preprocessing, self.failed = list(files), preprocessing, []

    def __len__(self):
        return len(self.files)

    def batches(self, batch_size: int):
        from ..loading import open_image

        for start in range(0, len(self.files), batch_size):
            pixels, ids = [], []
            for path in self.files[start:start + batch_size]:
                try:
                    pixels.append(self.preprocessing.pixels(open_image(path)))
                    ids.append(str(path))
                except ValueError as error:
                    self.failed.append({"file": str(path), "error": str(error)})
            shapes = {tuple(p.shape) for p in pixels}
            if len(shapes) > 1:
                raise ValueError(f"images of different sizes {sorted(shapes)}; pass --size to resize them")
            if pixels:
                yield Batch(self.preprocessing.normalize(torch.stack(pixels)), ids=ids)
