"""What several commands share: the error that becomes exit code 2, reading --param, --output, --device, --model
and --class-map, building the method of --method, and writing --out whole.

Helpers a command can reuse: :func:`parse_parameters` and :func:`build_method` (--method/--param),
:func:`output_picker` (--output), :func:`resolve_device` (--device), :func:`load_for_command` (--model, --weights),
:func:`staged` (--out), :func:`budget` (batches that fit in memory).
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import click


EXIT_SOME_FAILED, EXIT_USAGE = 1, 2


class Failure(click.ClickException):
    """A problem with the command as given: one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file=None):
        click.echo(f"relprop: error: {self.message}", err=True)


def one_line(error: BaseException) -> str:
    """An error's message on one line (whitespace runs become one space)."""
    return " ".join(str(error).split())


def floats(text: str | None) -> tuple | None:
    """--mean/--std: comma-separated numbers."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise Failure(f"expected comma-separated numbers such as 0.5,0.5,0.5, got {text!r}") from None


# ---- method parameters ------------------------------------------------------------------------------------------
def method_names() -> list[str]:
    """--method's choices: lrp (relprop.LRP, its parameters are the composite's) and the registry's other methods."""
    from ..attribution import registry  # torch: only for the commands that explain

    return registry.names()


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
    from ..attribution import registry

    return registry.settable(factory)


def typed_parameters(what: str, accepted: dict, given: dict[str, str]) -> dict:
    """Check the given names against ``accepted`` and read each value as the type its parameter takes."""
    unknown = [name for name in given if name not in accepted]
    if unknown:
        valid = f"its parameters: {', '.join(accepted)}" if accepted else "it takes no parameters"
        raise Failure(f"{what} has no parameter {unknown[0]!r}; {valid}")
    return {name: _typed(what, name, text, accepted[name]) for name, text in given.items()}


def _typed(what: str, name: str, text: str, parameter):
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
    from ..datasets.pipeline import recorded as as_json

    return as_json(values)


def build_composite(name: str, parameters: dict[str, str], preprocessing):
    """The composite by name with its --param texts; z^B bounds default to what the preprocessing can produce."""
    return _composite(name, parameters, preprocessing)[0]


def _composite(name: str, parameters: dict[str, str], preprocessing):
    """The composite and its parameters as used (given and defaults)."""
    from .. import composites

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
    from ..attribution import registry

    if method == "lrp":
        built, used = _composite(composite, parameters, preprocessing)
        return registry.build("lrp", model, composite=built, output=output), used
    entry = registry.get(method)
    accepted = entry.parameters()
    values = typed_parameters(f"method {method}", accepted, parameters)
    try:
        attributor = entry.build(model, output=output, **values)
    except (TypeError, ValueError) as error:
        raise Failure(f"method {method}: {error}") from None
    values = {**entry.defaults, **values}
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


# ---- the model's output, the model, the device -------------------------------------------------------------------
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
    from ..loading import LoadError, load_model

    try:
        loaded = load_model(model_spec, weights)
        loaded.preprocessing = loaded.preprocessing.override(size, floats(mean), floats(std))
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


# ---- memory, --out -----------------------------------------------------------------------------------------------
def budget(attributor, model, device, output=None):
    """The memory budget of a command: its refusals name --batch-size and --size."""
    from ..memory import Budget

    return Budget(attributor, model, device, output, knobs=("--batch-size", "--size"))


@contextlib.contextmanager
def staged(out: Path):
    """:class:`relprop.outputs.Staging` for --out: a folder that cannot be replaced is the command's error."""
    from ..outputs import OutputError, Staging

    try:
        staging = Staging(out)
    except OutputError as error:
        raise Failure(f"--out {error}") from None
    with staging:
        yield staging
