"""Data sources for benchmark(): the demo's generated images with object masks, image files, and the explanation
store of ``relprop run`` (its relevance evaluated as stored, not computed again).

Each has ``batches(batch_size)`` yielding benchmark.Batch objects, and ``batch(index, batch_size)`` with
``batch_count(batch_size)`` so that Ray actors read their own batches (sharded.py).
"""
from __future__ import annotations

import torch

from .benchmark import Batch, Numbered

# The demo benchmark's images: a seed the demo model was not trained on (training used 0 and 1, see
# demo/training.json).
DEMO_SEED = 2026


class DemoImages(Numbered):
    """Generated demo images (relprop.demo.generate) with labels and the deciding object's mask, normalised.

    Args:
        count: How many images.
        seed: The generator's seed (by default one the demo model was not trained on).
    """

    def __init__(self, count: int = 64, seed: int = DEMO_SEED):
        from ..demo import generate, normalize

        images, labels, masks = generate(count, seed)
        self.x = normalize(torch.from_numpy(images))
        self.labels, self.masks = torch.from_numpy(labels), torch.from_numpy(masks)
        self.ids = [f"demo:{seed}:{i}" for i in range(count)]

    def __len__(self):
        return len(self.x)

    def batch(self, index: int, batch_size: int) -> Batch:
        """The batch of the given number.

        Args:
            index: The batch number, from 0.
            batch_size: Samples per batch.

        Returns:
            A benchmark.Batch.
        """
        start, end = index * batch_size, (index + 1) * batch_size
        return Batch(self.x[start:end], self.labels[start:end], self.masks[start:end], self.ids[start:end])


class ImageFiles(Numbered):
    """Image files read batch by batch through a model's preprocessing; no labels or masks (target: predicted).

    Args:
        files: The image paths.
        preprocessing: The model's preprocessing (relprop.loading.Preprocessing: pixels from an image, then
            normalisation).
    """

    def __init__(self, files, preprocessing):
        self.files, self.preprocessing, self.failed = list(files), preprocessing, []

    def __len__(self):
        return len(self.files)

    def batch(self, index: int, batch_size: int) -> Batch | None:
        """The batch of the given number.

        Args:
            index: The batch number, from 0.
            batch_size: Samples per batch.

        Returns:
            A benchmark.Batch, or None when no file of the batch could be read (failed files are listed in
            self.failed).

        Raises:
            ValueError: when the images differ in size.
        """
        from ..loading import open_image

        pixels, ids = [], []
        for path in self.files[index * batch_size:(index + 1) * batch_size]:
            try:
                pixels.append(self.preprocessing.pixels(open_image(path)))
                ids.append(str(path))
            except ValueError as error:
                self.failed.append({"file": str(path), "error": str(error)})
        shapes = {tuple(p.shape) for p in pixels}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)}; pass --size to resize them")
        return Batch(self.preprocessing.normalize(torch.stack(pixels)), ids=ids) if pixels else None


class StoreBatches(Numbered):
    """The explained samples of a ``relprop run`` store, read chunk by chunk: inputs from the store's data set (its
    ``data`` spec, or the source given), labels and object masks (``extra/mask``) from the store, and the stored
    relevance under ``label`` (default: the store's composite, or its method), so that benchmark() evaluates what
    was stored for that method and explains only what the metrics must explain again (randomisation).

    Args:
        store: The store's path (or URL).
        label: The method label the stored relevance is reported under (default: the store's composite, or its
            method).
        source: The data set the store was written from, when its own ``data`` spec cannot be opened again (a Python
            data set).

    Raises:
        ValueError: for a store that keeps relevance summed over channels, a Python data set without source=, or a
            data set of another length.
    """

    def __init__(self, store, label: str | None = None, source=None):
        from ..datasets import open_source, open_store

        self.arguments = (store, label, source)  # what a Ray actor opens the store again from
        self.store = open_store(store)
        attrs = self.store.attrs
        if attrs["keep"] == "channels":
            raise ValueError(f"{store} keeps relevance summed over channels (--keep channels); the metrics need it "
                             "shaped like the input: run `relprop run` with --keep full or float16")
        if source is None and str(attrs["data"]).startswith("python:"):
            raise ValueError(f"{store} was written from a Python data set ({attrs['data']}); pass it as source= so "
                             "its inputs can be read again")
        self.source = open_source(source if source is not None else attrs["data"])
        if len(self.source) != self.store.count:
            raise ValueError(f"the data set has {len(self.source)} samples but {store} holds {self.store.count}; "
                             "give the data set the store was written from")
        self.label = label or (attrs["composite"] if attrs["method"] == "lrp" else attrs["method"])
        self.positions = (self.store.done & ~self.store.failed).nonzero()[0]

    def __len__(self):
        return len(self.positions)

    def __getstate__(self):
        return {"arguments": self.arguments}

    def __setstate__(self, state):
        self.__init__(*state["arguments"])

    def batch(self, index: int, batch_size: int) -> Batch:
        """The batch of the given number.

        Args:
            index: The batch number, from 0.
            batch_size: Samples per batch.

        Returns:
            A benchmark.Batch with the stored relevance.
        """
        import numpy as np

        chosen = self.positions[index * batch_size:(index + 1) * batch_size]
        x = torch.stack([self.source.read(int(i)).x for i in chosen])
        # each chunk checked against its checksum: a damaged one stops the evaluation naming it, never read as data
        relevance = torch.from_numpy(np.asarray(self.store.rows("relevance", chosen)))
        labels = torch.from_numpy(np.asarray(self.store.rows("label", chosen)))
        mask = torch.from_numpy(np.asarray(self.store.rows("extra/mask", chosen))) if "extra/mask" in self.store \
            else None
        ids = [str(i) for i in self.store.rows("id", chosen)]
        return Batch(x, labels, mask, ids, {self.label: relevance.to(x.dtype)})
