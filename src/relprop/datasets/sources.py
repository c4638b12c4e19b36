"""Where samples come from: a DATA spec names a source, a source reads sample i as (x, label, id, ...).

Specs: an image folder (a class per sub-folder, as torchvision's ImageFolder, or flat without labels),
``demo[:N]`` (the generated shapes, sample i made from the seed (2026, i), so any sample can be read on its own),
``demo-watermark[:N]`` (the same with relprop.demo.watermark's planted shortcut, and which samples carry it),
``file.py:FACTORY`` (a function of no arguments returning a torch Dataset of (x, label) or (x, label, id)), and any
name in :data:`SOURCES`. Adding a source is one function ``(argument, preprocessing) -> Source`` put in SOURCES.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..loading import IMAGE_SUFFIXES, LoadError, Preprocessing, call_factory, open_image

DEMO_SEED = 2026
DEMO_COUNT = 512


@dataclass
class Sample:
    """One sample as relprop run reads it.

    Attributes:
        x: The model input for one sample (no batch dimension).
        label: Its class, -1 when unknown.
        pixels: The input in display space, (C, H, W) in [0, 1], for previews.
        extra: Name -> per-sample ground truth (numpy), stored as extra/<name>.
    """
    x: torch.Tensor  # the model input for one sample (no batch dimension)
    label: int  # -1 when unknown
    pixels: torch.Tensor | None = None  # the input in display space, (C, H, W) in [0, 1], for previews
    extra: dict = field(default_factory=dict)  # name -> per-sample ground truth (numpy), stored as extra/<name>


class Source:
    """A data set as relprop run reads it: a count, an id per sample, and sample i on demand.

    read(i) raises ValueError (or any exception from user code) when sample i cannot be read; run lists it and
    goes on. extras maps a ground-truth name to (shape of one sample, numpy dtype).
    """

    spec: str = ""
    class_names: list | None = None
    extras: dict = {}
    labelled: bool = True  # False when no sample has a label (a flat image folder): --target label cannot apply

    def __len__(self) -> int:
        raise NotImplementedError

    def id(self, index: int) -> str:
        """The id of sample index, as the store and reports name it.

        Args:
            index: The sample's position.

        Returns:
            A string.
        """
        return str(index)

    def read(self, index: int) -> Sample:
        """Sample index, read on demand.

        Args:
            index: The sample's position.

        Returns:
            A Sample.

        Raises:
            ValueError: when the sample cannot be read (relprop run lists it and goes on).
        """
        raise NotImplementedError


class ImageFolder(Source):
    """Images in class sub-folders (sorted names are classes 0, 1, ...) or directly in the folder (no labels).

    Args:
        folder: The folder.
        preprocessing: The model's preprocessing (relprop.loading.Preprocessing).
        spec: The DATA spec recorded in the store (default: the folder).

    Raises:
        LoadError: for a folder with both images and class folders, or none.
    """

    def __init__(self, folder, preprocessing: Preprocessing, spec: str | None = None):
        self.folder, self.preprocessing = Path(folder), preprocessing
        self.spec = spec or str(folder)
        classes = sorted(p.name for p in self.folder.iterdir() if p.is_dir() and _images_under(p))
        flat = _images_in(self.folder)
        if classes and flat:
            raise LoadError(f"{self.folder} holds both images and class sub-folders ({', '.join(classes[:3])}); "
                            "move the loose images into a class folder, or point DATA at a folder of one kind")
        if classes:
            self.class_names = classes
            self.files = [(path, label) for label, name in enumerate(classes)
                          for path in _images_under(self.folder / name)]
        elif flat:
            self.class_names, self.labelled = None, False
            self.files = [(path, -1) for path in flat]
        else:
            raise LoadError(f"no images in {self.folder} nor in its sub-folders (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)})")

    def __len__(self):
        return len(self.files)

    def id(self, index):
        return self.files[index][0].relative_to(self.folder).as_posix()

    def read(self, index):
        path, label = self.files[index]
        pixels = self.preprocessing.pixels(open_image(path))
        return Sample(self.preprocessing.normalize(pixels), label, pixels)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class Demo(Source):
    """N generated shape images with their labels and the mask of the deciding object (extra/mask); with
    ``watermark=True`` the "Clever Hans" variant of relprop.demo.watermark, which also stores whether each sample
    carries the planted mark (extra/watermark).

    Args:
        count: How many images.
        preprocessing: The preprocessing (default: the demo model's).
        seed: Sample i is made from the seed (seed, i).
        watermark: The planted-shortcut variant.
    """

    def __init__(self, count: int = DEMO_COUNT, preprocessing: Preprocessing | None = None, seed: int = DEMO_SEED,
                 watermark: bool = False):
        from ..demo import model, shapes

        self.count, self.seed, self.watermark = count, seed, watermark
        self.preprocessing = preprocessing or Preprocessing(model.SIZE, model.MEAN, model.STD)
        self.spec = f"{'demo-watermark' if watermark else 'demo'}:{count}"
        self.class_names = list(shapes.KINDS)
        self.extras = {"mask": ((shapes.SIZE, shapes.SIZE), "bool")}
        if watermark:
            self.extras["watermark"] = ((), "bool")

    def __len__(self):
        return self.count

    def id(self, index):
        return f"{self.spec.partition(':')[0]}:{index}"

    def read(self, index):
        from ..demo import shapes, watermark

        if self.watermark:
            images, labels, masks, marked = watermark.generate(1, seed=(self.seed, index))
            extra = {"mask": masks[0], "watermark": marked[0]}
        else:
            images, labels, masks = shapes.generate(1, seed=(self.seed, index))
            extra = {"mask": masks[0]}
        pixels = torch.from_numpy(images[0])
        return Sample(self.preprocessing.normalize(pixels), int(labels[0]), pixels, extra)


class DatasetSource(Source):
    """A torch Dataset of (x, label) or (x, label, id); image-like x (C in 1 or 3, 2-D) gets min-max previews.

    Args:
        dataset: A map-style torch Dataset (len and indexing).
        spec: The name recorded in the store.

    Raises:
        LoadError: for a data set without len or indexing.
    """

    def __init__(self, dataset, spec: str):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise LoadError(f"{spec} is a {type(dataset).__name__}, not a map-style data set; give an object with "
                            "__len__ and __getitem__ (a torch.utils.data.Dataset) returning (x, label) or "
                            "(x, label, id)")
        self.dataset, self.spec = dataset, spec
        names = getattr(dataset, "classes", None)
        self.class_names = [str(n) for n in names] if isinstance(names, (list, tuple)) else None
        self._ids: dict = {}

    def __len__(self):
        return len(self.dataset)

    def id(self, index):
        return self._ids.get(index, str(index))

    def read(self, index):
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise LoadError(f"{self.spec}: item {index} is a {type(item).__name__}"
                            f"{f' of {len(item)}' if isinstance(item, (tuple, list)) else ''}; the data set must "
                            "return (x, label) or (x, label, id), with label None when unknown")
        x, label = torch.as_tensor(item[0]), item[1]
        if len(item) == 3:
            self._ids[index] = str(item[2])
        label = -1 if label is None else int(label)
        x = x.float() if not x.is_floating_point() else x
        pixels = None
        if x.dim() == 3 and x.shape[0] in (1, 3):  # an image: min-max scaled for display, as its range is unknown
            low, high = x.min(), x.max()
            pixels = (x - low) / (high - low) if high > low else torch.zeros_like(x)
        return Sample(x, label, pixels)


class FactorySource(DatasetSource):
    """file.py:FACTORY; pickled as its spec, so each Ray actor imports the file itself.

    Args:
        path: The Python file.
        factory: The function's name in it.
        spec: The DATA spec.
    """

    def __init__(self, path, factory: str, spec: str):
        self.path, self.factory = Path(path), factory
        super().__init__(call_factory(self.path, factory, "data set", "DATA as path/to/file.py:FACTORY"), spec)

    def __reduce__(self):
        return FactorySource, (str(self.path), self.factory, self.spec)


def _demo(name: str, watermark: bool):
    def source(argument: str | None, preprocessing: Preprocessing | None) -> Source:
        if argument is None:
            return Demo(DEMO_COUNT, preprocessing, watermark=watermark)
        if not argument.isdigit() or int(argument) < 1:
            raise LoadError(f"{name}:{argument}: give the number of samples, e.g. {name}:1000")
        return Demo(int(argument), preprocessing, watermark=watermark)
    return source


# name -> (argument after "name:" or None, preprocessing of the model) -> Source
SOURCES: dict[str, Callable[[str | None, Preprocessing | None], Source]] = {
    "demo": _demo("demo", False), "demo-watermark": _demo("demo-watermark", True)}


def open_recorded_source(attrs, preprocessing: Preprocessing | None = None) -> Source:
    """The data set a store was made from, read as that run read it: its DATA spec with the recorded --size, --mean
    and --std (which override the model's own preprocessing, as they did in the run).

    Args:
        attrs: The store's attributes (its recorded "data", "size", "mean", "std" and "input_shape").
        preprocessing: The model's own preprocessing, for what the run did not record.

    Returns:
        A Source.

    Raises:
        LoadError: for a recorded spec that no longer names anything readable.
    """
    if any(attrs.get(name) is not None for name in ("size", "mean", "std")):
        shape = attrs.get("input_shape") or []
        base = preprocessing or Preprocessing(channels=int(shape[0]) if len(shape) == 3 else 3)
        preprocessing = replace(base, size=attrs.get("size"),
                                mean=tuple(attrs.get("mean") or base.mean), std=tuple(attrs.get("std") or base.std))
    return open_source(attrs["data"], preprocessing)


def recorded_model_and_source(attrs, where, model=None, source=None):
    """The model and data set of a store's run: the ones given, else those its recorded --model and DATA specs name
    (the data set read as the run read it, open_recorded_source).

    Args:
        attrs: The store's attributes.
        where: The store's path, for messages.
        model: The model; None: the one the recorded --model spec loads.
        source: The data set (a Source or a DATA spec); None: the recorded one.

    Returns:
        (model, source, spec): spec is the recorded --model spec when the model was loaded from it, else None.

    Raises:
        ValueError: when the run's model or data set was a Python object and none is given, or the data set's length
            is not the store's.
    """
    spec, preprocessing = None, None
    if model is None:
        if str(attrs["model"]).startswith("python:"):
            raise ValueError(f"{where} was made with a Python model ({attrs['model']}); pass the model (model=)")
        from ..loading import load_model

        spec = attrs["model"]
        loaded = load_model(spec)
        model, preprocessing = loaded.model, loaded.preprocessing
    if source is None:
        if str(attrs["data"]).startswith("python:"):
            raise ValueError(f"{where} was made from a Python data set ({attrs['data']}); pass the data set "
                             "(source=)")
        source = open_recorded_source(attrs, preprocessing)
    if len(source) != int(attrs["count"]):
        raise ValueError(f"the data set has {len(source)} samples but {where} has {attrs['count']}; give the data "
                         "set the store was made from")
    return model, source, spec


def open_source(spec, preprocessing: Preprocessing | None = None) -> Source:
    """The source a DATA spec names (a registered name, file.py:FACTORY or an image folder) or a torch Dataset.

    Args:
        spec: A DATA spec ("demo:100", "demo-watermark:300", a folder, "file.py:FACTORY", a name in SOURCES), a
            torch Dataset, or a Source.
        preprocessing: The model's preprocessing for image folders (default: the demo's).

    Returns:
        A Source.

    Raises:
        LoadError: for a spec that names nothing readable (the message lists what is accepted).

    Example:
        >>> from relprop.datasets import open_source
        >>> source = open_source("demo:4")
        >>> len(source), source.id(0), source.read(0).x.shape
        (4, 'demo:0', torch.Size([3, 32, 32]))
    """
    if not isinstance(spec, (str, Path)):
        return DatasetSource(spec, f"python:{type(spec).__name__}")
    spec = str(spec)
    name, colon, argument = spec.partition(":")
    if name in SOURCES:
        return SOURCES[name](argument if colon else None, preprocessing)
    head, _, factory = spec.rpartition(":")
    if head.endswith(".py"):
        return FactorySource(head, factory, spec)
    path = Path(spec)
    if path.is_dir():
        return ImageFolder(path, preprocessing or Preprocessing(), spec)
    if path.exists():
        raise LoadError(f"DATA {spec} is a file; give a folder of images, one of {', '.join(sorted(SOURCES))}"
                        "[:N], or path/to/file.py:FACTORY")
    raise LoadError(f"DATA {spec!r} is neither a folder nor a known data set; give a folder of images, one of "
                    f"{', '.join(sorted(SOURCES))}[:N], or path/to/file.py:FACTORY")
