"""The command line: ``relprop explain``, ``relprop run``, ``relprop demo``, ``relprop composites``, ``relprop rules``.

Exit codes: 0 all done; 1 some images were skipped (unreadable, or the model cannot take them: they are listed, the
rest is written); 2 the command cannot run as given (unknown model, composite, parameter or device, weights that do
not fit, a batch that will not fit in memory): one line on stderr, nothing written.
Outputs are written into a hidden folder beside --out that replaces it as a whole when complete (:class:`Staging`).
Helpers a command can reuse: :func:`parse_parameters` and :func:`build_method` (--method/--param),
:func:`output_picker` (--output), :func:`resolve_device` (--device), :class:`MemoryBudget`, :class:`Progress`.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import click

from . import attribution
from .loading import LoadError

EXIT_SOME_FAILED, EXIT_USAGE = 1, 2


class Failure(click.ClickException):
    """A problem with the command as given: one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file=None):
        click.echo(f"relprop: error: {self.message}", err=True)


def _floats(text: str | None) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise Failure(f"expected comma-separated numbers such as 0.5,0.5,0.5, got {text!r}") from None


# ---- method parameters ------------------------------------------------------------------------------------------
# --method name -> the class in relprop.attribution (lrp: relprop.LRP, its parameters are the composite's).
METHODS = {"lrp": "LRP", **{name: method.__name__ for name, method in attribution.BY_NAME.items()}}
# Defaults the command line gives where the Python class has none.
CLI_DEFAULTS = attribution.DEFAULTS_BY_NAME
# Constructor parameters the command line sets otherwise (the model, --output) or cannot express (callables, maps).
NOT_PARAMETERS = ("self", "model", "output", "batch_size", "composite", "canonizers", "custom_attribution_func",
                  "layer_map", "name_map", "index_map", "forward", "feature_names", "class_names")
SIZES = ("window", "stride")  # an int or one int per dimension: window=16 or window=16,16
PER_CHANNEL = ("baseline", "low", "high")  # a number, or one per channel: baseline=0.1,0.2,0.3


def parse_parameters(texts) -> dict[str, str]:
    """--param NAME=VALUE texts -> {name: value text}; the values are typed by :func:`typed_parameters`."""
    given = {}
    for text in texts:
        name, equals, value = text.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise Failure(f"--param takes NAME=VALUE (e.g. --param epsilon=0.25), got {text!r}")
        given[name.strip()] = value.strip()
    return given


def parameter_list(factory) -> dict:
    """The parameters --param may set for a class or function: name -> inspect.Parameter."""
    return {name: parameter for name, parameter in inspect.signature(factory).parameters.items()
            if name not in NOT_PARAMETERS and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}


def typed_parameters(what: str, accepted: dict, given: dict[str, str]) -> dict:
    """Check the given names against ``accepted`` and read each value as the type its parameter takes."""
    unknown = [name for name in given if name not in accepted]
    if unknown:
        valid = f"its parameters: {', '.join(accepted)}" if accepted else "it takes no parameters"
        raise Failure(f"{what} has no parameter {unknown[0]!r}; {valid}")
    return {name: _typed(what, name, text, accepted[name]) for name, text in given.items()}


def _typed(what: str, name: str, text: str, parameter: inspect.Parameter):
    import torch

    default, annotation = parameter.default, str(parameter.annotation)
    expected = "a finite number"
    try:
        if name in SIZES:
            expected = "a positive int or one per dimension, e.g. 16 or 16,16"
            sizes = tuple(int(part) for part in text.split(","))
            return sizes[0] if len(sizes) == 1 else sizes
        if name in PER_CHANNEL:
            expected = "a number or one per channel, e.g. 0 or 0.1,0.2,0.3"
            values = [_finite(part) for part in text.split(",")]
            return values[0] if len(values) == 1 else torch.tensor(values).reshape(-1, 1, 1)
        if isinstance(default, bool) or "bool" in annotation:
            expected = "true or false"
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        if isinstance(default, int) or "int" in annotation:
            expected = "an integer"
            return int(text)
        if isinstance(default, float) or "float" in annotation:
            return _finite(text)
        if isinstance(default, str) or "str" in annotation:
            return text
    except (ValueError, KeyError):
        raise Failure(f"{what}: --param {name} takes {expected}, got {text!r}") from None
    raise Failure(f"{what}: --param {name} cannot be set from the command line; use the Python API")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def recorded(values: dict) -> dict:
    """Parameters as JSON values: tuples and tensors become lists."""
    from .datasets.pipeline import recorded as as_json

    return as_json(values)


def build_composite(name: str, parameters: dict[str, str], preprocessing):
    """The composite by name with its --param texts; z^B bounds default to what the preprocessing can produce."""
    return _composite(name, parameters, preprocessing)[0]


def _composite(name: str, parameters: dict[str, str], preprocessing):
    """The composite and its parameters as used (given and defaults)."""
    from . import composites

    if name not in composites.names():
        raise Failure(f"unknown composite {name!r}; choose one of {', '.join(composites.names())} "
                      "(relprop composites lists them with their parameters)")
    accepted = parameter_list(type(composites.get(name)))
    values = typed_parameters(f"composite {name}", accepted, parameters)
    if "low" in accepted and "high" in accepted and preprocessing is not None:
        low, high = preprocessing.bounds()
        values.setdefault("low", low)
        values.setdefault("high", high)
    try:
        composite = composites.get(name, **values)
    except (TypeError, ValueError) as error:
        raise Failure(f"composite {name}: {error}") from None
    used = {key: parameter.default for key, parameter in accepted.items() if parameter.default is not parameter.empty}
    return composite, recorded({**used, **values})


def build_method(method: str, composite: str, parameters: dict[str, str], model, preprocessing, output=None):
    """The attributor for --method with its --param texts (the composite's for lrp), and its parameters as used."""
    from .lrp import LRP

    if method == "lrp":
        built, used = _composite(composite, parameters, preprocessing)
        return LRP(model, built, output=output), used
    factory = getattr(attribution, METHODS[method])
    accepted = parameter_list(factory)
    values = {**CLI_DEFAULTS.get(method, {}), **typed_parameters(f"method {method}", accepted, parameters)}
    try:
        attributor = factory(model, output=output, **values)
    except (TypeError, ValueError) as error:
        raise Failure(f"method {method}: {error}") from None
    # as the method resolved them (e.g. occlusion's stride from its window), else as given or by default
    used = {name: getattr(attributor, name, values.get(name, parameter.default))
            for name, parameter in accepted.items()}
    return attributor, recorded(used)


def refuse_composite_without_lrp(method: str) -> None:
    """--composite given with a --method other than lrp would be ignored: refuse it (every command that takes both)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source("composite")
    if method != "lrp" and source not in (None, ParameterSource.DEFAULT):
        raise Failure(f"--composite chooses LRP's rules, but --method {method} uses none; leave --composite out, or "
                      "use --method lrp")


def parse_class_map(text: str | None) -> dict[str, int] | None:
    """--class-map cats=281,dogs=207 or a JSON file of {name: index} -> {name: index}."""
    if text is None:
        return None
    if text.endswith(".json") or Path(text).is_file():
        try:
            mapping = json.loads(Path(text).read_text())
        except (OSError, ValueError) as error:
            raise Failure(f"--class-map {text}: cannot read it as a JSON file of name: index ({error})") from None
        if not isinstance(mapping, dict):
            raise Failure(f"--class-map {text} holds a {type(mapping).__name__}; give an object {{\"cats\": 281}}")
        return mapping
    mapping = {}
    for pair in text.split(","):
        name, equals, index = pair.partition("=")
        if not equals or not name.strip() or not index.strip().isdigit():
            raise Failure(f"--class-map takes NAME=INDEX pairs (e.g. cats=281,dogs=207) or a JSON file, got {pair!r}")
        mapping[name.strip()] = int(index)
    return mapping


# ---- the model's output, the device ------------------------------------------------------------------------------
def output_picker(key: str | None):
    """A function reading the tensor to explain from the model's output: a dict key, an attribute (logits) or a
    tuple index; without a key the output must be a tensor. Its errors say how to pick from the command line."""
    import torch

    def pick(result):
        if key is not None:
            result = _pick(result, key)
        if not isinstance(result, torch.Tensor):
            raise TypeError(f"the model returned {_contents(result)}, not a tensor; pass --output KEY to pick the "
                            f"tensor to explain (e.g. --output {_example_key(result)}), or make the factory return "
                            "a model whose output is a tensor (wrap it in a module that picks it)")
        return result
    return pick


def _pick(result, key: str):
    from collections.abc import Mapping

    if isinstance(result, Mapping) and key in result:
        return result[key]
    if isinstance(result, (tuple, list)) and re.fullmatch(r"-?\d+", key) and -len(result) <= int(key) < len(result):
        return result[int(key)]
    if not key.startswith("_") and not isinstance(result, Mapping) and hasattr(result, key):
        return getattr(result, key)
    raise TypeError(f"--output {key}: the model returned {_contents(result)}, which has no {key!r}; pass one of "
                    "its keys, attributes or indices")


def _contents(result) -> str:
    import torch
    from collections.abc import Mapping

    kind = type(result).__name__
    if isinstance(result, Mapping):
        return f"a {kind} with keys {', '.join(map(str, result))}"
    if isinstance(result, (tuple, list)):
        fields = getattr(result, "_fields", None)
        named = f" ({', '.join(fields)})" if fields else ""
        return f"a {kind} of {len(result)} items{named}, indices 0 to {len(result) - 1}"
    if isinstance(result, torch.Tensor):
        return f"a tensor shaped {tuple(result.shape)}"
    fields = [name for name, value in vars(result).items() if isinstance(value, torch.Tensor)] \
        if hasattr(result, "__dict__") else []
    return f"a {kind}" + (f" with tensor attributes {', '.join(fields)}" if fields else "")


def _example_key(result) -> str:
    from collections.abc import Mapping

    if isinstance(result, Mapping) and result:
        return str(next(iter(result)))
    fields = getattr(result, "_fields", None)
    return fields[0] if fields else "0" if isinstance(result, (tuple, list)) else "logits"


def load_for_command(model_spec: str, weights, size=None, mean=None, std=None, device=None):
    """--model and --weights loaded, with --size/--mean/--std applied and moved to the device; a model that cannot
    be loaded is the command's error, and random torchvision weights get a note on stderr."""
    from .loading import load_model

    try:
        loaded = load_model(model_spec, weights)
        loaded.preprocessing = loaded.preprocessing.override(size, _floats(mean), _floats(std))
    except LoadError as error:
        raise Failure(str(error)) from None
    if model_spec.startswith("torchvision:") and weights is None:
        click.echo(f"relprop: note: {model_spec} has random weights (nothing is downloaded); pass --weights FILE "
                   "for trained ones", err=True)
    if device is not None:
        loaded.model.to(device)
    return loaded


def resolve_device(name: str):
    """--device as a torch.device, or Failure naming the devices this machine has."""
    import torch

    valid = ["cpu"]
    if torch.cuda.is_available():
        valid += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        valid.append("mps")
    if name in valid:
        return torch.device(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Failure(f"--device {name}: CUDA is not available here; valid choices: {', '.join(valid)}")
    raise Failure(f"--device {name!r} is not a device here; valid choices: {', '.join(valid)}")


# ---- memory, progress ---------------------------------------------------------------------------------------------
class MemoryBudget:
    """How many images of a shape fit in the memory left on the device, from :mod:`relprop.memory`'s estimate."""

    def __init__(self, attributor, model, device, output=None):
        from . import memory

        self.attributor, self.model, self.device, self.output = attributor, model, device, output
        self.free = memory.available(device)
        self.footprints = {}

    def need(self, shape: tuple, images: int) -> int | None:
        """About how many bytes explaining ``images`` images shaped (C, H, W) takes; None when unknown."""
        from . import memory

        if shape not in self.footprints:
            self.footprints[shape] = memory.footprint(self.model, shape, output=self.output)
        per_sample = self.footprints[shape]
        if per_sample is None:
            return None
        try:
            return memory.needed_bytes(self.attributor, per_sample, images, shape)
        except ValueError:  # e.g. an occlusion window larger than the image: the image fails on its own later
            return None

    def fitting(self, shape: tuple, wanted: int) -> int:
        """The most images (up to wanted) of this shape that fit at once; 0 when not even one does."""
        if self.free is None:
            return wanted
        count = wanted
        while count > 0 and (self.need(shape, count) or 0) > self.free:
            count -= 1
        return count

    def refusal(self, shape: tuple, images: int) -> str:
        """Why ``images`` images shaped ``shape`` do not fit, naming --size and --batch-size."""
        from . import memory

        fit = self.fitting(shape, images)
        advice = (f"use --batch-size {fit} or a smaller --size" if fit else
                  "use a smaller --size (or explain on a device with more memory)")
        return (f"explaining {images} image{'s' if images > 1 else ''} of {shape[1]}x{shape[2]} pixels at once "
                f"needs about "
                f"{memory.gib(self.need(shape, images))} but {memory.gib(self.free)} are available on "
                f"{self.device}; {advice}")


class Progress:
    """A tqdm bar when stderr is a terminal, else one line per batch (images done of all, and the rate) when there
    is more than one batch."""

    def __init__(self, total: int, batch_size: int):
        from tqdm import tqdm

        self.total, self.done, self.started = total, 0, time.monotonic()
        self.bar = tqdm(total=total, unit="image", file=sys.stderr, leave=False) if sys.stderr.isatty() else None
        self.quiet = total <= batch_size

    def update(self, count: int):
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        if self.quiet:
            return
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        click.echo(f"relprop: {self.done}/{self.total} images ({rate:.2f} images/s)", err=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---- staging ------------------------------------------------------------------------------------------------------
class Staging:
    """A hidden folder beside ``out`` to write into; ``commit`` puts it in place of ``out`` as a whole (one atomic
    exchange where the system has one), else it vanishes.

    Its name holds this process's id, so a later run removes the folders that killed runs left. An existing ``out``
    is replaced only when it is empty or written by relprop (it holds the MARKER file): a mistyped --out never
    deletes anyone's files.
    """

    MARKER = ".relprop-output"

    def __init__(self, out: Path):
        out = Path(out)
        if out.resolve() == Path.cwd() or out.resolve() in Path.cwd().parents:  # it is replaced, so never these
            raise Failure(f"--out {out} is the current folder or contains it; give a sub-folder such as relprop-out")
        if out.exists() and not out.is_dir():
            raise Failure(f"--out {out} is a file; give a folder (it is created if missing)")
        if out.is_dir():
            entries = sorted(entry.name for entry in out.iterdir())
            if entries and self.MARKER not in entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise Failure(f"--out {out} holds files relprop did not write ({shown}); give a new or empty "
                              "folder, or one an earlier relprop run wrote (it is replaced as a whole)")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        self.path = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}.", dir=out.parent))
        (self.path / self.MARKER).write_text("written by relprop: the next run into this folder replaces it whole\n")

    def commit(self):
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes the folder private; the result is an ordinary one
        if not self.out.exists():
            os.rename(self.path, self.out)
        elif not _exchange(self.path, self.out):  # two renames: out is missing for a moment in between
            aside = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(self.out)}{os.getpid()}.", dir=self.out.parent))
            os.rename(self.out, aside / "old")
            os.rename(self.path, self.out)
            os.rename(aside, self.path)
        # self.path now holds the old content (if any); __exit__ removes it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.pid"


def remove_stale_staging(out: Path) -> None:
    """Remove the staging folders beside ``out`` whose process no longer runs (a run that was killed)."""
    pattern = re.compile(re.escape(_staging_prefix(out)) + r"(\d+)\.[^.]+")
    for folder in out.parent.iterdir():
        match = pattern.fullmatch(folder.name)
        if match and folder.is_dir() and not _running(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists under another user, or cannot tell: keep its folder
    return True


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    import ctypes
    import errno

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(second))


# ---- commands ---------------------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relprop", prog_name="relprop")
def main():
    """Layer-wise Relevance Propagation from the command line."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES_OR_FOLDERS...")
@click.option("--model", "model_spec", required=True,
              help="demo | torchvision:NAME (e.g. torchvision:resnet50) | path/to/file.py:FACTORY")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="safetensors file or torch.save'd state dict (read with weights_only=True)")
@click.option("--method", default="lrp", show_default=True, type=click.Choice(sorted(METHODS)),
              help="lrp (with --composite), or another attribution method to compare with")
@click.option("--composite", default="epsilon_plus_flat", show_default=True,
              help="see `relprop composites`")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="a parameter of the composite (lrp) or of the method, e.g. --param epsilon=0.25, --param "
                   "window=16,16 (occlusion), --param steps=32 (integrated_gradients); repeatable")
@click.option("--output", "output_key", default=None, metavar="KEY",
              help="for models returning a dict, tuple or object: the key, index or attribute to explain (e.g. "
                   "logits or 0)")
@click.option("--target", default="auto", show_default=True, help="auto (the predicted class) or a class index")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-out"),
              show_default=True, help="folder for heatmaps, overlays and summary.json; sub-folders of the inputs "
                                      "are mirrored in it; an earlier run's folder is replaced as a whole")
@click.option("--format", "output_format", type=click.Choice(["png", "npy"]), default="png", show_default=True,
              help="npy also saves the raw relevance of each image")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps (where present)")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="resize the shorter side and centre-crop to SIZE (default: the model's; 224 for torchvision, "
                   "none for file.py models)")
@click.option("--mean", default=None, help="per-channel mean to subtract, e.g. 0.485,0.456,0.406")
@click.option("--std", default=None, help="per-channel std to divide by, e.g. 0.229,0.224,0.225")
@click.option("--cmap", default="bwr", show_default=True, help="bwr, seismic, coldnhot or any matplotlib map")
@click.option("--reduce", type=click.Choice(["sum", "positive", "absolute"]), default="sum", show_default=True,
              help="how colour channels are combined into one heatmap")
def explain(inputs, model_spec, weights, method, composite, params, output_key, target, out, output_format,
            batch_size, device, size, mean, std, cmap, reduce):
    """Explain images: one heatmap and one overlay PNG per image, and summary.json.

    Folders are searched with their sub-folders (hidden ones and --out left out); the outputs mirror them.
    """
    from . import viz
    from .loading import find_images

    if target != "auto" and not target.isdigit():
        raise Failure(f"--target must be auto or a class index (0, 1, ...), got {target!r}")
    refuse_composite_without_lrp(method)
    target = None if target == "auto" else int(target)
    try:
        viz.colormaps.get(cmap)
    except ValueError as error:
        raise Failure(f"--cmap: {error}") from None
    given = parse_parameters(params)
    torch_device = resolve_device(device)
    try:
        files = find_images(inputs, exclude=out)
    except LoadError as error:
        raise Failure(str(error)) from None
    loaded = load_for_command(model_spec, weights, size, mean, std)
    pick = output_picker(output_key)
    attributor, parameters = build_method(method, composite, given, loaded.model, loaded.preprocessing, pick)
    loaded.model.to(torch_device)
    budget = MemoryBudget(attributor, loaded.model, torch_device, pick)
    if loaded.preprocessing.size is not None:  # every image has this shape: refuse before reading any
        shape = (loaded.preprocessing.channels, loaded.preprocessing.size, loaded.preprocessing.size)
        wanted = min(batch_size, len(files))
        if budget.fitting(shape, wanted) < wanted:
            raise Failure(budget.refusal(shape, wanted))

    with Staging(out) as staging:
        records, failures = _explain_files(files, loaded, attributor, target, staging.path, output_format,
                                           batch_size, torch_device, cmap, reduce, budget)
        if not records and failures and any(failure.get("stage") == "model" for failure in failures):
            first = next(failure for failure in failures if failure.get("stage") == "model")
            raise Failure(f"no image could be explained; {first['file']}: {first['error']}")
        summary = {
            "model": model_spec, "weights": None if weights is None else str(weights), "method": method,
            "composite": composite if method == "lrp" else None, "parameters": parameters, "output": output_key,
            "target": "auto" if target is None else target,
            "preprocessing": {"size": loaded.preprocessing.size, "mean": list(loaded.preprocessing.mean),
                              "std": list(loaded.preprocessing.std)},
            "images": records, "failed": failures,
        }
        (staging.path / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        staging.commit()
    for failure in failures:
        click.echo(f"relprop: skipped {failure['file']}: {failure['error']}", err=True)
    used = composite if method == "lrp" else method
    click.echo(f"explained {len(records)} of {len(files)} images with {used}; wrote {out}")
    if failures:
        sys.exit(EXIT_SOME_FAILED)


# What a model or method raises for an input it cannot take (wrong size, target out of range, a user's assert, out
# of memory).
MODEL_ERRORS = (ValueError, TypeError, RuntimeError, LookupError, ArithmeticError, AssertionError, MemoryError)


def explain_images(attributor, items: list, target, device):
    """Explain (key, input) items as one batch; when that fails, one by one to find the culprit. Yields
    (items, explanation) for what worked and (item, error message) for each image that failed."""
    import torch

    try:
        yield items, attributor(torch.stack([pixels for _, pixels in items]).to(device), target)
        return
    except MODEL_ERRORS as error:
        if len(items) == 1:
            yield items[0], " ".join(str(error).split()) or type(error).__name__
            return
    for item in items:
        yield from explain_images(attributor, [item], target, device)


def _explain_files(files, loaded, attributor, target, folder: Path, output_format, batch_size, device, cmap, reduce,
                   budget: MemoryBudget):
    """Read, explain and render the images batch by batch; returns (records, failures)."""
    import numpy as np

    from .loading import open_image

    preprocessing = loaded.preprocessing
    records, failures, used = [], [], set()
    progress = Progress(len(files), batch_size)
    for start in range(0, len(files), batch_size):
        batch = []
        for path, name in files[start:start + batch_size]:
            try:
                batch.append(((path, name), preprocessing.pixels(open_image(path))))
            except ValueError as error:
                failures.append({"file": str(path), "error": str(error), "stage": "read"})
        # images of different sizes (when no --size is set) are explained in groups of equal shape, each group in
        # parts that fit in memory
        pixels_of = dict(batch)
        for shape in dict.fromkeys(pixels.shape for _, pixels in batch):
            group = [(key, preprocessing.normalize(pixels)) for key, pixels in batch if pixels.shape == shape]
            fit = budget.fitting(tuple(shape), len(group))
            if fit == 0:
                for (path, _), _ in group:
                    failures.append({"file": str(path), "error": budget.refusal(tuple(shape), 1), "stage": "model"})
                continue
            for part in range(0, len(group), fit):
                for done, result in explain_images(attributor, group[part:part + fit], target, device):
                    if isinstance(result, str):  # done is the one image that failed: ((path, name), input)
                        failures.append({"file": str(done[0][0]), "error": result, "stage": "model"})
                        continue
                    pixels = np.stack([pixels_of[key].numpy() for key, _ in done])
                    records += _write(done, pixels, result, loaded.labels, folder, output_format, cmap, reduce,
                                      used)
        progress.update(len(files[start:start + batch_size]))
    progress.close()
    return records, failures


def _write(items, pixels, explanation, labels, folder: Path, output_format, cmap, reduce, used: set) -> list[dict]:
    """Heatmap, overlay (and relevance) files of explained images, and their records for summary.json."""
    import numpy as np
    import torch

    from . import viz

    relevance = explanation.relevance.detach().cpu()
    heatmaps = viz.heatmap(relevance, cmap=cmap, reduce=reduce)
    overlays = viz.overlay(torch.from_numpy(pixels), relevance, cmap=cmap, reduce=reduce)
    scale = max(1, 256 // max(pixels.shape[2:]))  # tiny inputs (e.g. 32 px) are enlarged to be seen
    output = explanation.output.reshape(len(items), -1)
    records = []
    for i, ((path, name), _) in enumerate(items):
        stem = _unique(name.with_suffix("").as_posix(), used)
        record = {"file": str(path), "heatmap": f"{stem}.heatmap.png", "overlay": f"{stem}.overlay.png"}
        (folder / stem).parent.mkdir(parents=True, exist_ok=True)
        viz.save_image(heatmaps[i], folder / record["heatmap"], scale=scale)
        viz.save_image(overlays[i], folder / record["overlay"], scale=scale)
        if output_format == "npy":
            record["relevance"] = f"{stem}.relevance.npy"
            np.save(folder / record["relevance"], relevance[i].numpy())
        predicted, explained = _classes(explanation, output, i)
        record.update({
            "predicted": predicted, "predicted_label": _label(labels, predicted),
            "target": explained, "target_label": _label(labels, explained),
            "output": _number(explanation.explained[i]), "relevance_sum": _number(explanation.relevance_sum[i]),
            "residual": _number(explanation.delta[i]),
        })
        records.append(record)
    return records


def _classes(explanation, output, i) -> tuple[int | None, int | None]:
    """(predicted, target) class of sample i; None for per-location outputs (segmentation), whose class maps do not
    fit one number: the heatmap then explains every location's own target."""
    per_location = explanation.output.dim() > 2
    predicted = None if per_location else int(output[i].argmax())
    target = explanation.target
    if target is None or target[i].numel() != 1:
        return predicted, None
    return predicted, int(target[i])


def _number(value) -> float | None:
    """A JSON number, or None (null) where the method defines none (NaN) or it overflowed."""
    value = float(value)
    return value if math.isfinite(value) else None


def _unique(stem: str, used: set) -> str:
    name, count = stem, 1
    while name in used:
        count += 1
        name = f"{stem}-{count}"
    used.add(name)
    return name


def _label(labels, index):
    return labels[index] if labels is not None and index is not None and 0 <= index < len(labels) else None


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-demo"),
              show_default=True, help="folder for demo.png, index.html and demo.json")
@click.option("--composite", "composite_names", multiple=True,
              help="composites to compare (repeatable; default: four common ones)")
@click.option("--count", type=click.IntRange(1, 32), default=8, show_default=True, help="how many images")
@click.option("--seed", type=int, default=7, show_default=True, help="which generated images")
def demo(out, composite_names, count, seed):
    """Explain generated images with the embedded model, no download: where does relevance land? Then explain a data
    set with a planted shortcut into a store and let SpRAy find it (watermark.zarr, spray/index.html)."""
    from . import composites
    from .demo.tour import showcase

    for name in composite_names:
        if name not in composites.names():
            raise Failure(f"unknown composite {name!r}; choose one of {', '.join(composites.names())}")
    with Staging(out) as staging:
        result = showcase.run(staging.path, composite_names or showcase.COMPOSITES, count, seed)
        staging.commit()
    click.echo(showcase.describe(result))
    click.echo(f"wrote {out / 'demo.png'}, {out / 'index.html'} and the SpRAy report {out / 'spray' / 'index.html'}")


@main.command(name="run")
@click.argument("data", metavar="DATA")
@click.option("--model", "model_spec", required=True,
              help="demo | torchvision:NAME (e.g. torchvision:resnet50) | path/to/file.py:FACTORY")
@click.option("--store", "store_path", required=True, metavar="OUT.zarr",
              help="the Zarr store to write; an existing one made with the same arguments is resumed")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="safetensors file or torch.save'd state dict (read with weights_only=True)")
@click.option("--method", default="lrp", show_default=True, type=click.Choice(sorted(METHODS)),
              help="lrp (with --composite), or another attribution method")
@click.option("--composite", default="epsilon_plus_flat", show_default=True, help="see `relprop composites`")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="a parameter of the composite (lrp) or of the method, e.g. --param epsilon=0.25, --param "
                   "steps=32 (integrated_gradients); repeatable")
@click.option("--target", default="label", show_default=True,
              help="label (the sample's class; a flat folder has none: its predicted class), predicted, or a class "
                   "index")
@click.option("--class-map", "class_map", default=None, metavar="NAME=INDEX,...|FILE.json",
              help="the data set's class names as the model's class indices, e.g. cats=281,dogs=207 or a JSON file "
                   "{\"cats\": 281}; needed for --target label when the folder's classes are not the model's")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="samples per forward pass")
@click.option("--chunk", type=click.IntRange(min=1), default=None,
              help="samples per store chunk, the unit of resuming (default: whole batches of about 4 MiB; a store "
                   "made earlier keeps its own)")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="local: threads reading samples (default 1, 0 reads in the main thread); ray: actors "
                   "(default one per GPU, else per CPU)")
@click.option("--keep", type=click.Choice(["full", "channels", "float16"]), default="full", show_default=True,
              help="relevance as float32, summed over channels, or as float16")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="--engine ray: join the Ray cluster at HOST:PORT (default: start "
                                              "Ray on this machine for the run)")
@click.option("--overwrite", is_flag=True, help="delete an existing store at --store and start over")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (local engine)")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="image folders: resize the shorter side and centre-crop to SIZE (default: the model's)")
@click.option("--mean", default=None, help="image folders: per-channel mean, e.g. 0.485,0.456,0.406")
@click.option("--std", default=None, help="image folders: per-channel std, e.g. 0.229,0.224,0.225")
def run(data, model_spec, store_path, weights, method, composite, params, target, class_map, batch_size, chunk,
        workers, keep, engine, address, overwrite, device, size, mean, std):
    """Explain every sample of a data set into a resumable Zarr store (see docs/how-to/datasets.md)."""
    from . import datasets

    if target not in ("label", "predicted") and not target.isdigit():
        raise Failure(f"--target must be label, predicted or a class index (0, 1, ...), got {target!r}")
    if address is not None and engine != "ray":
        raise Failure("--address joins a Ray cluster; add --engine ray")
    refuse_composite_without_lrp(method)
    given = parse_parameters(params)
    mapping = parse_class_map(class_map)
    torch_device = resolve_device(device)
    try:
        datasets.store.check_path(store_path)
    except datasets.StoreError as error:
        raise Failure(str(error)) from None
    loaded = load_for_command(model_spec, weights, size, mean, std)
    lrp_composite = None
    if method == "lrp":  # the store records the parameters given, as relprop.datasets.run does from Python
        from . import composites

        lrp_composite = build_composite(composite, given, loaded.preprocessing)
        parameters = recorded(typed_parameters(f"composite {composite}",
                                               parameter_list(type(composites.get(composite))), given))
    else:  # typed as `relprop explain` types them; the store records them as given
        parameters = typed_parameters(f"method {method}", parameter_list(getattr(attribution, METHODS[method])),
                                      given)
    loaded.model.to(torch_device)
    recipe = datasets.ModelSpec(model_spec, None if weights is None else str(weights), loaded.model)
    try:
        summary = datasets.run(recipe, data, store_path, class_map=mapping,
                               composite=lrp_composite, composite_name=composite, method=method,
                               target=int(target) if target.isdigit() else target, batch_size=batch_size,
                               chunk=chunk, keep=keep,
                               engine=engine, address=address, overwrite=overwrite, workers=workers,
                               parameters=parameters, preprocessing=loaded.preprocessing)
    except (LoadError, datasets.StoreError, datasets.RunError, ValueError) as error:
        raise Failure(" ".join(str(error).split())) from None
    except KeyboardInterrupt:
        done = datasets.open_store(store_path).done if datasets.store.read_attributes(store_path) else None
        so_far = "" if done is None else f"{int(done.sum())} of {len(done)} samples are done; "
        click.echo(f"relprop: interrupted; {so_far}the same command resumes", err=True)
        sys.exit(130)
    for entry in summary.skipped:
        click.echo(f"relprop: skipped {entry['id']} (sample {entry['index']}): {entry['error']}", err=True)
    click.echo(str(summary))
    if summary.skipped:
        sys.exit(EXIT_SOME_FAILED)


@main.command(name="verify")
@click.argument("store", metavar="STORE")
def verify(store):
    """Check every done chunk of a store against its checksums; name the damaged ones (exit 1 if any)."""
    from . import datasets

    try:
        opened = datasets.open_store(store)
        damaged = datasets.store.verify(opened.group)
    except datasets.StoreError as error:
        raise Failure(" ".join(str(error).split())) from None
    done, chunk = opened.done, opened.chunk
    chunks = sum(bool(done[start:start + chunk].all()) for start in range(0, opened.count, chunk))
    for damage in damaged:
        click.echo(f"relprop: damaged: {damage}", err=True)
    checked = "checksums" if "checksum" in opened.group else "readable files (a store made before checksums)"
    if damaged:
        click.echo(f"{store}: {len({d.start for d in damaged})} of {chunks} done chunks are damaged; "
                   "`relprop run` with the same arguments recomputes them")
        sys.exit(EXIT_SOME_FAILED)
    click.echo(f"{store}: all {chunks} done chunks match their {checked}; {int(done.sum())} of {opened.count} "
               "samples done")


@main.command(name="composites")
def list_composites():
    """List the composites with their parameters."""
    from . import composites

    _print_listing([(name, signature, type(composites.get(name)).__doc__)
                    for name, signature, _ in composites.describe()])


@main.command(name="rules")
def list_rules():
    """List the rules with their parameters."""
    from . import rules

    _print_listing([(name, signature, type(rules.get(name)).__doc__) for name, signature, _ in rules.describe()])


def first_sentence(doc: str | None) -> str:
    """A docstring's first sentence, whole (it may run over several lines; "et al. 2015" does not end it)."""
    text = " ".join((doc or "").split())
    end = re.search(r"[.!?](?=\s+[A-Z(`]|$)", text)
    return text[:end.end()] if end else text


def _print_listing(rows):
    """Name, first sentence of the docstring and parameters of each row, wrapped to the terminal's width."""
    width = max(len(name) for name, _, _ in rows)
    columns = max(60, shutil.get_terminal_size((100, 24)).columns)
    indent = " " * (width + 2)
    for name, signature, doc in rows:
        # annotations are strings under postponed evaluation; the listing shows names and defaults only
        signature = re.sub(r": '[^']*'", "", re.sub(r": '[^']*' = ", "=", signature))
        click.echo(textwrap.fill(first_sentence(doc), columns, initial_indent=f"{name.ljust(width)}  ",
                                 subsequent_indent=indent))
        click.echo(textwrap.fill(signature, columns, initial_indent=indent, subsequent_indent=indent + " "))


# ---- dataset-wide analysis: SpRAy and the ViRelAy export ----------------------------------------------------------
def _cluster_counts(text: str):
    """--clusters: "auto", one k, or a range "2..8"."""
    if text == "auto":
        return "auto"
    low, dots, high = text.partition("..")
    try:
        ks = range(int(low), int(high) + 1) if dots else [int(low)]
    except ValueError:
        raise Failure(f"--clusters takes auto, a number such as 4, or a range such as 2..8; got {text!r}") from None
    if not ks or min(ks) < 2:
        raise Failure(f"--clusters: numbers of clusters start at 2; got {text!r}")
    return list(ks)


@main.command()
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", default=None, help="comma-separated class indices (default: every class with samples)")
@click.option("--all", "over_all", is_flag=True, help="analyse all samples together instead of per class")
@click.option("--clusters", default="auto", show_default=True,
              help="auto (every k from 2 to the eigengap's suggestion), a number, or a range 2..K (k-means for "
                   "each; the report opens on the most separated, the lowest conductance)")
@click.option("--neighbors", type=click.IntRange(min=1), default=10, show_default=True,
              help="k of the k-nearest-neighbour graph")
@click.option("--neighbor-search", "search", type=click.Choice(["auto", "exact", "approximate"]), default="auto",
              show_default=True, help="the kNN graph's neighbour search: auto is exact below 200,000 samples and "
                                      "approximate (faiss-cpu) from there")
@click.option("--eigenvalues", type=click.IntRange(min=2), default=None,
              help="how many of the Laplacian's smallest eigenpairs to compute (default: 32; from 200,000 samples "
                   "the 12 the eigengap needs)")
@click.option("--embed", "embeddings", multiple=True, type=click.Choice(["tsne", "umap", "spectral"]),
              help="2-D embeddings (repeatable; default: spectral, and tsne for classes of up to 5,000 samples)")
@click.option("--size", type=click.IntRange(min=1), default=3, show_default=True,
              help="heatmaps are average-pooled to SIZE x SIZE before comparing (3: centre, edges, corners apart)")
@click.option("--power", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="pooled relevance is raised to POWER, signs kept (0.5 lets a small mark count beside the object; "
                   "1: relevance as it is)")
@click.option("--density/--no-density", default=False, show_default=True,
              help="also cluster with HDBSCAN (a second opinion with noise; subsampled above 10,000 samples)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder for the HTML report (index.html); default: STORE-spray beside the store")
@click.option("--max-samples", type=click.IntRange(min=1), default=2000, show_default=True,
              help="samples per class the report shows with pictures")
@click.option("--seed", type=int, default=0, show_default=True)
def spray(store, classes, over_all, clusters, neighbors, search, eigenvalues, embeddings, size, power, density, out,
          max_samples, seed):
    """Spectral Relevance Analysis of a store: clusters of similar heatmaps (the model's strategies) per class."""
    import numpy as np

    from .analysis import pages as report
    from .analysis import spray as spray_analysis

    ks = _cluster_counts(clusters)
    try:
        chosen = None if classes is None else [int(part) for part in classes.split(",")]
    except ValueError:
        raise Failure(f"--classes takes comma-separated class indices such as 0,3; got {classes!r}") from None
    algorithms = ("kmeans", "hdbscan") if density else ("kmeans",)
    try:
        results = spray_analysis.run(store, chosen, over_all, ks, neighbors, eigenvalues or "auto",
                                     tuple(embeddings) or "auto", algorithms, size, power, seed=seed,
                                     progress=lambda text: click.echo(f"spray: {text}", err=True), search=search)
    except (FileNotFoundError, ValueError) as error:
        raise Failure(str(error)) from None
    for name, result in results.items():
        sizes = np.bincount(result.clusters[result.chosen][result.clusters[result.chosen] >= 0])
        scores = ", ".join(f"{clustering} {score:.3f}" for clustering, score in result.conductance.items()
                           if np.isfinite(score))
        click.echo(f"{name}: {len(result.index)} samples, eigengap suggests {result.suggested} cluster(s); "
                   f"most separated: {result.chosen} sizes {sizes.tolist()} (conductance, the share of neighbour "
                   f"links crossing clusters: {scores or 'undefined'})")
        for note in result.notes:
            click.echo(f"{name}: {note}")
    skipped = spray_analysis.skipped_sets(store)
    if skipped:
        click.echo(spray_analysis.skipped_message(skipped))
    out = out or report_folder(store)
    with Staging(out) as staging:
        report.write(store, staging.path, list(results), max_samples=max_samples, seed=seed)
        staging.commit()
    click.echo(f"wrote {store}/analysis and the report {out / 'index.html'}")


def report_folder(store: Path) -> Path:
    """Where `relprop spray` writes its report unless told: beside the store, named after it (run.zarr: run-spray)."""
    store = Path(store)
    return store.parent / f"{store.name.removesuffix('.zarr')}-spray"


@main.command(name="import")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option("--relevance", "relevance_file", required=True, type=click.Path(dir_okay=False, exists=True,
              path_type=Path), help="heatmaps: .npy (N, C, H, W), (N, H, W) or (N, D); or an .h5 of CoRelAy/ViRelAy "
              "layout (attribution, label, optional prediction and index)")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help=".npy of N integer labels (-1: unknown); required with a .npy --relevance")
@click.option("--images", "images_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="inputs for previews: .npy (N, C, H, W) in [0, 1] or uint8, or ViRelAy's input.h5 (data)")
@click.option("--output", "output_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help=".npy of the model's outputs (N, classes)")
@click.option("--ids", "ids_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="text file of N sample ids, one a line")
@click.option("--class-names", default=None, help="comma-separated class names, in class order")
@click.option("--chunk", type=click.IntRange(min=1), default=None, help="samples per store chunk (default: ~4 MiB)")
@click.option("--overwrite", is_flag=True, help="replace an existing store at STORE")
def import_heatmaps(store, relevance_file, labels_file, images_file, output_file, ids_file, class_names, chunk,
                    overwrite):
    """Write pre-computed heatmaps into a store, for `relprop spray` and `relprop export virelay`."""
    import numpy as np

    from . import datasets
    from .datasets import imported

    def npy(path):
        if path is None:
            return None
        if path.suffix != ".npy":
            raise Failure(f"{path}: give a .npy file (numpy.save) here")
        return np.load(path, mmap_mode="r", allow_pickle=False)  # read chunk by chunk, never whole

    try:
        if relevance_file.suffix in (".h5", ".hdf5"):
            images_h5 = images_file if images_file is not None and images_file.suffix in (".h5", ".hdf5") else None
            arrays = imported.read_h5(relevance_file, images_h5)
            if images_file is not None and images_h5 is None:
                arrays["images"] = npy(images_file)
        else:
            if labels_file is None:
                raise Failure("--labels is required with a .npy --relevance (an .h5 file carries its own)")
            arrays = {"relevance": npy(relevance_file), "images": npy(images_file)}
        if labels_file is not None:
            arrays["labels"] = npy(labels_file)
        if output_file is not None:
            arrays["output"] = npy(output_file)
        if ids_file is not None:
            arrays["ids"] = ids_file.read_text().splitlines()
        names = None if class_names is None else [name.strip() for name in class_names.split(",")]
        result = datasets.from_arrays(store, class_names=names, chunk=chunk, overwrite=overwrite,
                                      data=str(relevance_file), **arrays)
    except (ValueError, OSError, datasets.StoreError) as error:
        raise Failure(" ".join(str(error).split())) from None
    click.echo(f"wrote {store}: {result.count} heatmaps of {result.attrs['classes']} classes; next: relprop spray "
               f"{store}")


@main.group()
def export():
    """Export a store for other tools."""


@export.command(name="virelay")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for the project (project.yaml, HDF5 files, label map)")
def export_virelay(store, out):
    """Write a ViRelAy project (input, attribution and analysis HDF5 files, label map, project YAML)."""
    from .analysis import virelay

    with Staging(out) as staging:
        try:
            virelay.export(store, staging.path)
        except (FileNotFoundError, ValueError) as error:
            raise Failure(str(error)) from None
        staging.commit()
    click.echo(f"wrote {out / 'project.yaml'}; open it with: virelay {out / 'project.yaml'}")


# The ground-truth benchmark of docs/how-to/evaluate.md: every composite that fits a CNN and the attribution methods beside it.
DEMO_METHODS = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
                "epsilon_alpha2_beta1_flat", "gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
                "deeplift", "occlusion", "guided_backprop")
DEMO_METRICS = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game", "aopc", "randomisation",
                "randomisation_last")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _names(values, default):
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or list(default)


@main.command(name="evaluate")
@click.argument("data", metavar="DATA")
@click.option("--model", "model_spec", required=True,
              help="demo | torchvision:NAME | path/to/file.py:FACTORY")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="safetensors file or torch.save'd state dict (read with weights_only=True)")
@click.option("--methods", "method_names", multiple=True, metavar="NAMES",
              help="comma-separated composites and attribution methods (default: all that fit a CNN)")
@click.option("--metrics", "metric_names", multiple=True, metavar="NAMES",
              help="comma-separated metrics (default: mass and rank accuracy, pointing game, AOPC, randomisation)")
@click.option("--count", type=click.IntRange(min=1), default=64, show_default=True,
              help="how many generated images when DATA is demo")
@click.option("--patch-size", type=click.IntRange(min=1), default=None,
              help="AOPC's and selectivity's region size in pixels (default: 4 on demo's 32x32 images, else 16; "
                   "a 224x224 image has 196 regions of 16x16, 3136 of 4x4: see --steps)")
@click.option("--steps", type=click.IntRange(min=0), default=16, show_default=True,
              help="AOPC's and selectivity's curve: the regions removed in at most this many steps, several regions a "
                   "step where there are more (each step is a forward pass of every image); 0: one region per step, "
                   "the full curve (196 steps for 16x16 regions of a 224x224 image)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-evaluation"),
              show_default=True, help="folder for table.md, table.csv, ranking.csv, scores.csv and report.html")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="samples per batch and perturbed copies per forward pass")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (local engine)")
@click.option("--size", type=click.IntRange(min=1), default=None, help="resize and centre-crop images to SIZE")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: spread the batches over Ray actors, as relprop run does")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="--engine ray: how many actors "
              "(default: one per GPU, else one per CPU)")
@click.option("--address", default=None, help="--engine ray: join the Ray cluster at HOST:PORT (default: start "
              "Ray on this machine)")
@click.option("--randomisation-layers", type=click.Choice(["all", "blocks"]), default="blocks", show_default=True,
              help="randomisation metrics: the model's top-level blocks, each randomised whole (a coarser cascade, "
                   "one explanation per block), or every layer with parameters in turn (one explanation each: "
                   "42 on a ResNet-18, several times slower)")
def evaluate_command(data, model_spec, weights, method_names, metric_names, count, patch_size, steps, out, batch_size,
                     device, size, engine, workers, address, randomisation_layers):
    """Measure explanations: DATA is demo (generated images with object masks) or image files/folders."""
    from . import composites
    from .evaluate import benchmark, methods as evaluate_methods
    from .evaluate.benchmark import METRICS
    from .datasets.work import ModelSpec, RunError
    from .evaluate.batches import DemoImages, ImageFiles
    from .loading import collect_images

    methods = _names(method_names, DEMO_METHODS)
    metrics = _names(metric_names, DEMO_METRICS)
    for name in methods:
        if name not in evaluate_methods.names():
            raise Failure(f"unknown method {name!r}; choose from {', '.join(evaluate_methods.names())}")
    for name in metrics:
        if name not in METRICS:
            raise Failure(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    if data != "demo" and any(m in metrics for m in ("relevance_mass_accuracy", "relevance_rank_accuracy",
                                                     "pointing_game", "attribution_localisation",
                                                     "top_k_intersection", "auc")):
        raise Failure("localisation metrics need object masks, which only DATA=demo has; pass --metrics without them")
    if (address is not None or workers is not None) and engine != "ray":
        raise Failure("--address and --workers go with --engine ray; add it")
    if patch_size is None:
        patch_size = 4 if data == "demo" else 16
    torch_device = resolve_device(device)
    loaded = load_for_command(model_spec, weights, size)
    try:
        source = DemoImages(count) if data == "demo" else ImageFiles(collect_images([data]), loaded.preprocessing)
    except LoadError as error:
        raise Failure(str(error)) from None
    low, high = loaded.preprocessing.bounds()
    # z^B bounds: what the pixels can become, for each composite that takes them (as --composite does)
    method_options = {name: {"low": low, "high": high} for name in methods if name in composites.names()
                      and {"low", "high"} <= set(parameter_list(type(composites.get(name))))}
    loaded.model.to(torch_device)
    with Staging(out) as staging:
        try:
            # Ray actors load the model from its spec themselves, as relprop run's do
            model = loaded.model if engine == "local" else ModelSpec(
                model_spec, None if weights is None else str(weights), loaded.model)
            result = benchmark(model, source, methods, metrics, batch_size=batch_size, progress=True,
                               device=torch_device, method_options=method_options, engine=engine, workers=workers,
                               address=address,
                               options={**{name: {"patch_size": patch_size, "max_steps": steps or None}
                                           for name in ("aopc", "aopc_lerf", "selectivity")},
                                        **({name: {"layers": "blocks"} for name in ("randomisation",
                                                                                    "randomisation_last",
                                                                                    "randomisation_independent")}
                                           if randomisation_layers == "blocks" else {})})
        except (ValueError, TypeError, RuntimeError, RunError) as error:
            raise Failure(" ".join(str(error).split())) from None
        result.save(staging.path)
        staging.commit()
    click.echo(result.markdown())
    for (method, metric), error in result.errors.items():
        click.echo(f"relprop: {method} / {metric} not computed: {error}", err=True)
    failed = getattr(source, "failed", [])
    for failure in failed:
        click.echo(f"relprop: skipped {failure['file']}: {failure['error']}", err=True)
    removing = [name for name in ("aopc", "aopc_lerf", "selectivity") if name in metrics]
    if removing:
        click.echo(f"{', '.join(removing)}: regions of {patch_size}x{patch_size} pixels (--patch-size), "
                   + (f"removed in at most {steps} steps (--steps)" if steps else "one per step (--steps 0)"), err=True)
    if result.seconds:
        spent = sorted(result.seconds.items(), key=lambda item: -item[1])
        click.echo("time per metric (all methods): " + ", ".join(f"{metric} {seconds:.1f} s"
                                                                  for metric, seconds in spent), err=True)
    samples = len(source) - len(failed)
    click.echo(f"evaluated {_count(len(methods), 'method')} by {_count(len(metrics), 'metric')} on "
               f"{_count(samples, 'sample')}; wrote {out}")
    if failed:
        sys.exit(EXIT_SOME_FAILED)


# ---- relprop concepts (Concept Relevance Propagation) --------------------------------------------------------------
@main.command(name="concepts")
@click.argument("image", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--model", "model_spec", default=None, help="with IMAGE: demo, torchvision:NAME or file.py:FACTORY")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="a .safetensors / .pt state dict for --model")
@click.option("--layer", required=True, help="the module whose channels are the concepts, e.g. features.28")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True,
              help="IMAGE: concepts shown; --store alone: reference samples per channel")
@click.option("--store", "store_path", default=None, metavar="STORE.zarr",
              help="a `relprop run` store: alone, build its concept atlas; with IMAGE, show reference samples")
@click.option("--composite", default="epsilon_plus_flat", show_default=True, help="IMAGE: see `relprop composites`")
@click.option("--target", default="auto", show_default=True, help="IMAGE: auto (the predicted class) or a class index")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lower", default=None, help="IMAGE: a lower layer; draws the attribution graph into --layer")
@click.option("--heatmaps/--no-heatmaps", default=True, show_default=True,
              help="with --store: show each reference sample's conditional heatmap beside it, both cut to the "
                   "channel's receptive field (three passes over a channel's references; off: the previews only)")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="--store alone: where relevance maximisation runs, as for `relprop run`")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="--engine ray: actors")
@click.option("--address", default=None, help="--engine ray: join the Ray cluster at HOST:PORT")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-concepts"),
              show_default=True, help="folder for index.html and its pictures")
def concepts(image, model_spec, weights, layer, top, store_path, composite, target, batch_size, lower, heatmaps,
             engine, workers, address, out):
    """The top concepts of one image with their conditional heatmaps (IMAGE --model), or the concept atlas of a
    store: each channel's reference samples, found by relevance maximisation (--store alone)."""
    from .concepts import maximise, pages as report
    from .datasets import RunError, StoreError
    from .lrp import LRP

    if image is None and store_path is None:
        raise Failure("give an IMAGE with --model for its concepts, or --store STORE for the concept atlas")
    if target != "auto" and not target.isdigit():
        raise Failure(f"--target must be auto or a class index (0, 1, ...), got {target!r}")
    try:
        with Staging(out) as staging:
            if image is None:
                found = maximise(store_path, [layer], k=top, batch_size=batch_size, engine=engine, workers=workers,
                                 address=address)[layer]
                report.atlas_page(store_path, layer, staging.path, found, heatmaps=heatmaps)
                what = f"the concept atlas of {len(found.relevance_index)} channels of {layer}"
            else:
                if model_spec is None:
                    raise Failure("IMAGE needs --model (the model to explain)")
                from .loading import open_image

                loaded = load_for_command(model_spec, weights)
                pixels = loaded.preprocessing.pixels(open_image(image))
                x = loaded.preprocessing.normalize(pixels)[None]
                lrp = LRP(loaded.model, build_composite(composite, {}, loaded.preprocessing))
                shown = report.image_page(lrp, x, pixels, layer, staging.path, None if target == "auto" else
                                          int(target), top, store_path, title=f"relprop concepts: {image.name}",
                                          lower=lower, reference_heatmaps=heatmaps)
                what = f"the top {len(shown['channels'])} concepts of {layer} for class {shown['target']}"
            staging.commit()
    except (LoadError, StoreError, RunError, ValueError, KeyError) as error:
        raise Failure(" ".join(str(error).split())) from None
    click.echo(f"wrote {what}: {out / 'index.html'}")


# ---- relprop correct (ClArC: remove a shortcut SpRAy found, and verify) -------------------------------------------
@main.command(name="correct")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option("--class", "class_index", type=click.IntRange(min=0), required=True,
              help="the class whose SpRAy clusters were analysed (analysis/class-C)")
@click.option("--cluster", type=int, required=True, help="the cluster of samples that carry the artifact")
@click.option("--clustering", default=None, help="which stored clustering, e.g. kmeans-2 (default: the chosen one)")
@click.option("--layer", required=True, help="the module whose output the CAV lives in, e.g. features.9")
@click.option("--method", type=click.Choice(["p-clarc", "a-clarc", "rr-clarc"]), default="p-clarc",
              show_default=True, help="p-clarc: project at inference; a-clarc / rr-clarc: fine-tune")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-corrected"),
              show_default=True, help="folder for model.json (use it as --model), cav.safetensors, weights and "
                                      "report/index.html")
@click.option("--model", "model_spec", default=None, help="the model to correct (default: the store's --model)")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="its weights (safetensors or a state dict), when the store's run used --weights")
@click.option("--data", default=None, help="the store's data set (default: the DATA it was made from)")
@click.option("--cav", "kind", type=click.Choice(["pattern", "filter"]), default="pattern", show_default=True,
              help="pattern: difference of means (Pahde et al. 2024); filter: a linear classifier's weights")
@click.option("--pooling", type=click.Choice(["none", "mean"]), default="none", show_default=True,
              help="none: a direction per channel and position; mean: over channels (the artifact anywhere)")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="fine-tuning epochs (default: a-clarc 5, rr-clarc 3)")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="fine-tuning learning rate, SGD with momentum 0.9 (default: a-clarc 0.01, rr-clarc 0.001)")
@click.option("--penalty", type=click.FloatRange(min=0), default=None,
              help="rr-clarc: weight of the squared gradient along the CAV (default 100)")
@click.option("--train", type=click.Choice(["after", "all"]), default=None,
              help="which layers fine-tuning trains: those after --layer (a-clarc's default) or all (rr-clarc's)")
@click.option("--seed", type=int, default=0, show_default=True)
def correct(store, class_index, cluster, clustering, layer, method, out, model_spec, weights, data, kind, pooling,
            epochs, lr, penalty, train, seed):
    """Remove the shortcut a SpRAy cluster shows (ClArC) and verify it: a corrected model and a before/after
    report from one command."""
    from .correct import pipeline
    from .datasets import StoreError

    try:
        if model_spec is None and (weights is not None or data is not None):  # the store's model, to take the
            # weights, and whose preprocessing reads the data
            from .datasets.store import open_store

            model_spec = str(open_store(store).attrs["model"])
        loaded = load_for_command(model_spec, weights) if model_spec is not None else None
        model, source = (loaded.model, None) if loaded is not None else (None, None)
        if data is not None:
            from .datasets import open_source

            source = open_source(data, loaded.preprocessing if loaded is not None else None)
        with Staging(out) as staging:
            summary = pipeline.run(store, class_index, cluster, layer, method, staging.path, model=model,
                                   model_spec=model_spec, weights=weights, source=source, clustering=clustering,
                                   kind=kind, pooling=pooling, epochs=epochs, lr=lr, penalty=penalty, train=train,
                                   seed=seed, training=out.parent / f".{out.name}.training",
                                   progress=lambda text: click.echo(f"correct: {text}", err=True))
            staging.commit()
    except (LoadError, StoreError, FileNotFoundError, ValueError, TypeError) as error:
        raise Failure(" ".join(str(error).split())) from None
    for name, figures in summary["metrics"].items():
        click.echo(f"{name}: " + ", ".join(f"{metric} {value:.3f}" for metric, value in figures.items()))
    click.echo(f"wrote {out / 'model.json'} (use it as --model) and the report {out / 'report' / 'index.html'}")


if __name__ == "__main__":
    main()
