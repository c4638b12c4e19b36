"""What the command line loads: models from a spec, weights without unpickling, images with their preprocessing.

Model specs: ``demo`` (the embedded shapes model), ``demo-watermark`` (the same network trained on shapes with a
planted "Clever Hans" watermark, relprop.demo.watermark), ``torchvision:NAME`` (architecture only, random weights unless
a weights file is given), ``path/to/file.py:FACTORY`` (a function of no arguments returning an nn.Module) and
``path/to/model.json`` (a model corrected by ``relprop correct``). Model files that a part of relprop above this
module knows how to read register their loader here (:func:`register_model_file`): relprop.correct.saved registers
``.json``; the modules that do are named in ``MODEL_FILE_PROVIDERS`` and imported when a spec is first read, so
this module stays below the tools whose files it opens and ``import relprop`` stays light.
Every problem with what the user gave raises :class:`LoadError`, whose message names the problem and the fix.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class LoadError(Exception):
    """Something the user gave cannot be used; the message says what and how to fix it."""


@dataclass(frozen=True)
class Preprocessing:
    """Image -> model input: resize the shorter side to size and centre-crop (None keeps the image as it is),
    scale to [0, 1], then subtract mean and divide by std per channel."""

    size: int | None = None
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    channels: int = 3

    def override(self, size=None, mean=None, std=None) -> Preprocessing:
        changed = replace(self, size=self.size if size is None else size, mean=tuple(mean or self.mean),
                          std=tuple(std or self.std))
        for name in ("mean", "std"):
            if len(getattr(changed, name)) not in (1, changed.channels):
                raise LoadError(f"--{name} has {len(getattr(changed, name))} values but the model reads "
                                f"{changed.channels} channels; give 1 or {changed.channels} values")
        if any(value <= 0 for value in changed.std):
            raise LoadError(f"--std must be positive, got {changed.std}")
        if changed.size is not None and changed.size < 1:
            raise LoadError(f"--size must be a positive number of pixels, got {changed.size}")
        return changed

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The lowest and highest model input a pixel can give (pixel 0 and 1), shaped (C, 1, 1)."""
        mean, std = self._column(self.mean), self._column(self.std)
        return (0 - mean) / std, (1 - mean) / std

    def _column(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).expand(self.channels).reshape(-1, 1, 1).clone()

    def pixels(self, image) -> torch.Tensor:
        """A PIL image -> (C, H, W) floats in [0, 1], resized and cropped; 16-bit and float images keep their range."""
        import numpy as np
        from PIL import Image

        if is_deep(image):  # one channel of 16/32-bit integers or floats: resized as floats, repeated for RGB models
            plane = self._fit(Image.fromarray(unit_range(image)))  # mode F: no rounding to 8 bits
            array = np.repeat(np.asarray(plane, dtype=np.float32)[None], self.channels, axis=0)
        else:
            array = np.asarray(self._fit(image.convert("L" if self.channels == 1 else "RGB")), dtype=np.float32) / 255
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(array.copy())

    def _fit(self, image):
        """Resize the shorter side to size and crop the centre (nothing without a size)."""
        from PIL import Image

        if self.size is None:
            return image
        scale = self.size / min(image.size)
        width, height = max(self.size, round(image.width * scale)), max(self.size, round(image.height * scale))
        if (width, height) != image.size:
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (width - self.size) // 2, (height - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self._column(self.mean)) / self._column(self.std)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocessing: Preprocessing
    labels: list | None  # a name per output class, when known
    spec: str


# ---- models -----------------------------------------------------------------------------------------------------
DEMO_MODELS = {"demo": "model", "demo-watermark": "watermark"}  # spec -> module of relprop.demo with load()
MODEL_FILES: dict[str, Callable] = {}  # suffix -> load(path, weights) -> LoadedModel, see register_model_file
# modules above this one that register model files when imported (a plug-in list, by name: no import cycle)
MODEL_FILE_PROVIDERS = ("relprop.correct.saved",)


def register_model_file(suffix: str, load: Callable) -> None:
    """Let load_model read model specs ending in suffix with load (how a module above this one adds its file kind).

    Args:
        suffix: The end of the spec, e.g. ".json".
        load: A function (path, weights) -> LoadedModel; it may call load_model again for a base model.
    """
    MODEL_FILES[suffix] = load


def load_model(spec: str, weights: str | Path | None = None) -> LoadedModel:
    """The model a spec names, in eval mode, with the weights file applied when one is given."""
    is_factory = ":" in spec and spec.rsplit(":", 1)[0].endswith(".py")
    for provider in MODEL_FILE_PROVIDERS:
        importlib.import_module(provider)  # registers its suffix once; later calls find it in sys.modules
    for suffix, load_file in MODEL_FILES.items():  # e.g. a model corrected by `relprop correct` (model.json)
        if spec.endswith(suffix):
            return load_file(spec, weights)
    if spec not in DEMO_MODELS and not spec.startswith("torchvision:") and not is_factory:
        raise LoadError(f"unknown model spec {spec!r}; use demo, demo-watermark, torchvision:NAME (e.g. "
                        "torchvision:resnet50), path/to/file.py:FACTORY or a corrected model's model.json")
    if weights is not None:
        state = read_weights(weights)  # before building: a bad file should fail before a large model is made
    if spec in DEMO_MODELS:
        from .demo import model as demo

        load = importlib.import_module(f"relprop.demo.{DEMO_MODELS[spec]}").load
        loaded = LoadedModel(demo.ShapeNet() if weights is not None else load(), Preprocessing(
            demo.SIZE, demo.MEAN, demo.STD), list(demo.KINDS), spec)
    elif spec.startswith("torchvision:"):
        loaded = _torchvision_model(spec, spec.split(":", 1)[1])
    else:
        path, factory = spec.rsplit(":", 1)
        loaded = LoadedModel(_factory_model(Path(path), factory), Preprocessing(), None, spec)
    if weights is not None:
        apply_weights(loaded.model, state, weights, spec)
    loaded.model.eval()
    first_conv = next((m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels == 1:
        loaded.preprocessing = replace(loaded.preprocessing, channels=1, mean=loaded.preprocessing.mean[:1],
                                       std=loaded.preprocessing.std[:1])
    return loaded


def _torchvision_model(spec: str, name: str) -> LoadedModel:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LoadError(f"torchvision has no classification model {name!r}; {hint}see "
                        "torchvision.models.list_models() for the names")
    model = torchvision.models.get_model(name, weights=None)
    try:  # class names ship inside torchvision's code, no download needed
        labels = list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
    except (AttributeError, KeyError, ValueError):
        labels = None
    return LoadedModel(model, Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD), labels, spec)


def _factory_model(path: Path, factory: str) -> torch.nn.Module:
    model = call_factory(path, factory, "model", "--model path/to/file.py:FACTORY")
    if not isinstance(model, torch.nn.Module):
        raise LoadError(f"{path}:{factory}() returned {type(model).__name__}; it must return a torch.nn.Module")
    return model


def call_factory(path: Path, factory: str, what: str, usage: str):
    """Import a user's Python file and call its function of no arguments; LoadError names what went wrong."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{what} file not found: {path}; give {usage} with an existing file")
    module_name = f"relprop_user_{what.replace(' ', '_')}_{abs(hash(str(path.resolve())))}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's file: any error in it is theirs to fix
        raise LoadError(f"importing {path} failed: {type(error).__name__}: {_one_line(error)}") from error
    function = getattr(module, factory, None)
    if not callable(function):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module_name]
        raise LoadError(f"{path} has no function {factory!r}; it defines {', '.join(found) or 'no functions'}")
    try:
        return function()
    except Exception as error:
        raise LoadError(f"{path}:{factory}() failed: {type(error).__name__}: {_one_line(error)}; the factory is "
                        "called with no arguments") from error


# ---- weights ----------------------------------------------------------------------------------------------------
def read_weights(path) -> dict:
    """A state dict from a safetensors file or a torch.save'd dict of tensors; never unpickles other objects."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"weights file not found: {path}; check the path given to --weights")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise LoadError(f"cannot read {path} as safetensors ({_one_line(error)}); is it a complete "
                            ".safetensors file?") from error
    try:
        with warnings.catch_warnings():  # torch's remarks on pickle protocols would break the one-line error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise LoadError(f"cannot read weights from {path}: it is not a safetensors file nor a PyTorch state dict "
                        "readable with weights_only=True (relprop never unpickles arbitrary objects); save "
                        "model.state_dict() with torch.save or safetensors") from error
    if isinstance(state, dict):
        for key in ("state_dict", "model"):  # common checkpoint layouts
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoadError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; save "
                        "model.state_dict()")
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def apply_weights(model: torch.nn.Module, state: dict, path, spec: str) -> None:
    """Load a state dict, or raise LoadError saying which keys or shapes do not fit."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [f"{key}: file {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
                for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        parts = [f"{len(items)} {what} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
                 for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
                 if items]
        raise LoadError(f"weights {path} do not fit {spec}: {'; '.join(parts)}; pass weights saved from this "
                        "architecture, or the --model they were trained with")
    model.load_state_dict(state)


# ---- images -----------------------------------------------------------------------------------------------------
def find_images(inputs, exclude=None) -> list[tuple[Path, Path]]:
    """(file, where its outputs go) for files given directly and the image files (by suffix) in folders given, their
    sub-folders included (sorted; hidden files and folders, and the folder ``exclude``, are left out); outputs
    mirror the sub-folders, files given directly go to the top."""
    skip = None if exclude is None else Path(exclude).resolve()
    found = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            found.append((path, Path(path.name)))  # read later: a missing or broken file is reported and skipped
            continue
        inside = []
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(path)
            if (file.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in relative.parts)
                    or not file.is_file() or skip is not None and file.resolve().is_relative_to(skip)):
                continue
            inside.append((file, relative))
        if not inside:
            raise LoadError(f"no images in folder {path} or its sub-folders (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)})")
        found.extend(inside)
    return found


def collect_images(inputs, exclude=None) -> list[Path]:
    """The image files :func:`find_images` finds."""
    return [file for file, _ in find_images(inputs, exclude)]


def open_image(path: Path):
    """The decoded PIL image turned as its EXIF orientation says (as viewers show it), or ValueError with a short
    reason."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            bits = getattr(image, "tag_v2", {}).get(258)  # a TIFF's bits per sample: the range of its integers
            upright = ImageOps.exif_transpose(image)
            upright = upright.copy() if upright is image else upright
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a readable image ({_one_line(error)})") from None
    if bits:
        upright.info["bits_per_sample"] = int(bits[0] if isinstance(bits, tuple) else bits)
    return upright


def is_deep(image) -> bool:
    """Whether an image holds more than 8 bits per value (16/32-bit integers or floats, one channel)."""
    return image.mode in ("I", "F") or image.mode.startswith("I;16")


def unit_range(image):
    """A 16/32-bit integer or float image as float32 values in [0, 1]: integers divided by the largest value of the
    file's bit depth (16 for PNG), floats as they are when within [0, 1], else scaled from their min..max."""
    import numpy as np

    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("the float image contains NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return values
    bits = image.info.get("bits_per_sample") or (16 if image.mode.startswith("I;16") or values.max() <= 65535
                                                 else 32)
    return (np.clip(values.astype(np.float64), 0, None) / (2.0 ** bits - 1)).clip(0, 1).astype(np.float32)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
