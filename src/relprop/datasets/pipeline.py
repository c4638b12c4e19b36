"""relprop.datasets.run: explain every sample of a data set into a store, resuming whatever is missing.

Order of a run: check the store path; take the store's lock; start or join Ray (--engine ray); load the model and open
the source; read the first readable sample and run the model once (input shape, number of classes); open the store
for the run (:meth:`relprop.datasets.store.Store.open_for_run`: it creates the store, or checks that the existing one
was made with the same arguments, every one that changes a stored number, and says which chunks are left); explain
those chunks with the chosen engine, which streams them into the store; list skipped samples; summarise. Nothing is
created on disk before the engine is up and the model has run once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..loading import Preprocessing
from . import store as store_module
from .sources import Sample, Source, open_source
from .store import Shapes, Store
from .work import ChunkWorker, ModelSpec, RunError, Settings, build_attributor

ENGINES = ("local", "ray")
KEEP = ("full", "channels", "float16")
DEFAULT_COMPOSITE = "epsilon_plus_flat"
PREVIEW_SIZE = 64
# Samples per chunk by default: about this much relevance, so that the fixed cost of a chunk's dozen writes is small
# next to its data, while a killed run loses at most one chunk of work.
CHUNK_BYTES = 4 * 2 ** 20


@dataclass
class Summary:
    """What run() did: counts, time and the store's size.

    Attributes:
        store: The store's path.
        count: Samples in the data set.
        explained: Samples explained by this call (not those skipped, nor those done by an earlier call).
        already_done: Samples done before this call.
        skipped: Every skipped sample of the store: {"index", "id", "error"}.
        seconds: The call's wall time.
        store_bytes: The store's size on disk (None for a remote store).
    """
    store: str
    count: int  # samples in the data set
    explained: int  # samples explained by this call (not those skipped, nor those done by an earlier call)
    already_done: int  # samples done before this call
    skipped: list  # every skipped sample of the store: {"index", "id", "error"}
    seconds: float
    store_bytes: int | None

    @property
    def throughput(self) -> float:
        """Samples explained per second by this call."""
        return self.explained / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self):
        if self.already_done >= self.count:
            return (f"nothing to do: all {self.count} samples of {self.store} were done before; "
                    f"{len(self.skipped)} skipped")
        size = "" if self.store_bytes is None else f", store {self.store_bytes / 2 ** 20:.1f} MiB"
        resumed = f" ({self.already_done} were done before)" if self.already_done else ""
        return (f"explained {self.explained} of {self.count} samples in {self.seconds:.1f} s "
                f"({self.throughput:.1f} samples/s){resumed}; {len(self.skipped)} skipped{size}; wrote {self.store}")


def run(model, dataset, store, composite=None, method: str = "lrp", target="label",
        batch_size: int = 32, keep: str = "full", engine: str = "local", address: str | None = None,
        overwrite: bool = False, workers: int | None = None, chunk: int | None = None, device=None,
        parameters: dict | None = None, weights=None, preprocessing: Preprocessing | None = None,
        composite_name: str | None = None, progress: bool = True, class_map: dict | None = None) -> Summary:
    """Explain every sample of dataset with model into the Zarr store at store; returns a Summary.

    A store that exists is resumed: chunks already done are kept, and the same call finishes the rest.

    Args:
        model: An nn.Module, or a spec as on the command line ("demo", "torchvision:resnet50", "file.py:factory")
            with optional weights.
        dataset: A DATA spec ("demo:100", a folder, "file.py:factory") or a torch Dataset of (x, label) or (x,
            label, id).
        store: The store's folder (or URL).
        composite: The composite (method "lrp"): a name or a Composite; None: "auto".
        method: "lrp" or an attribution method by name (relprop.attribution.BY_NAME).
        target: "label", "predicted" or a class index.
        batch_size: Samples per explained batch.
        keep: "full", "channels" (summed over dim 1) or "float16".
        engine: "local" or "ray".
        address: The Ray cluster's address (engine "ray"); None: a local Ray.
        overwrite: Replace an existing store made with other settings instead of refusing.
        workers: Sample-reading threads (local) or actors (ray).
        chunk: Samples per store chunk, the unit of resuming and of Ray's work (default: whole batches of about 4
            MiB of relevance); an existing store keeps its own.
        device: Where the model runs (None: where it is).
        parameters: The composite's (lrp) or the method's parameters.
        weights: A weights file for a model spec.
        preprocessing: How images are read (size, mean, std); default: the model spec's own.
        composite_name: The name recorded for a Composite object.
        progress: Show a progress bar.
        class_map: The data set's class names -> the model's class indices, for folders whose labels are not the
            model's classes.

    Returns:
        A Summary.

    Raises:
        ValueError: for an unknown engine, keep or target, or workers or chunk of the wrong kind.
        RunError: when the model, data or store do not fit (e.g. an empty data set, classes that differ from the
            model's).
        StoreError: for a store path that cannot be written, or an existing store made with other settings (without
            overwrite).
    """
    settings = _settings(method, composite, parameters, target, keep, batch_size)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be a number >= 0, got {workers!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive number of samples, got {chunk!r}")
    store_module.check_path(store)
    if engine == "ray" and address:
        from .ray_engine import check_reachable

        check_reachable(address)  # before any work: a wrong address fails in seconds
    with store_module.writing(store), _engine_up(engine, address, workers):
        return _run_locked(model, dataset, store, settings, engine, address, workers, chunk, device, parameters,
                           weights, preprocessing, composite, composite_name, overwrite, progress, class_map)


def _engine_up(engine: str, address, workers):
    """Ray started or joined for the whole run, so that a cluster that is not there leaves nothing on disk."""
    if engine != "ray":
        return contextlib.nullcontext()
    from .ray_engine import pass_on_ray

    return pass_on_ray(address, workers, "chunks finished so far are kept, so the same command resumes")


def _run_locked(model, dataset, store, settings, engine, address, workers, chunk, device, parameters, weights,
                preprocessing, composite, composite_name, overwrite, progress, class_map) -> Summary:
    """run() while holding the store's writer lock."""
    model, recipe, spec, weights_sha256, preprocessing = _model(model, weights, preprocessing)
    if device is not None:
        model.to(device)
    source = dataset if isinstance(dataset, Source) else open_source(dataset, preprocessing)
    if len(source) == 0:
        raise RunError(f"the data set {source.spec} has no samples")
    if settings.target == "label" and not source.labelled:
        settings = replace(settings, target="predicted")
        note(f"{source.spec} has no labels (no class sub-folders), so each sample's predicted class is explained "
             "(as --target predicted)")
    input_shape, classes, has_pixels = _probe(model, source)
    source = _labels_as_model_classes(source, classes, settings.target, class_map)
    build_attributor(model, settings)  # a method or composite that cannot be built is refused before the store is
    attributes = {"model": spec, "weights_sha256": weights_sha256, "model_sha256": model_sha256(model),
                  "dtype": _dtype_of(model), "method": settings.method,
                  "composite": _composite_label(settings, composite_name),
                  "composite_rules": _composite_rules(settings, composite_name),
                  "parameters": recorded(parameters),
                  "target": settings.target, "keep": settings.keep, "data": source.spec, "count": len(source),
                  **_preprocessing_of(getattr(source, "preprocessing", None) or preprocessing),
                  "class_map": None if class_map is None else dict(class_map),
                  "input_shape": list(input_shape), "classes": classes, "class_names": source.class_names}
    side = min(PREVIEW_SIZE, input_shape[-2]) if has_pixels else None
    wanted = Shapes(len(source), chunk or default_chunk(settings.batch_size, settings.keep, input_shape),
                    tuple(input_shape), classes, None if side is None else (input_shape[0], side, side),
                    dict(source.extras))
    opened, starts = Store.open_for_run(store, attributes, wanted, overwrite, note)
    shapes = replace(opened.shapes, extras=wanted.extras)
    if chunk is not None and chunk != shapes.chunk:
        note(f"{store} keeps its chunking of {shapes.chunk} samples per chunk (a store's layout is fixed when it is "
             f"made); --chunk {chunk} applies to new stores (or with --overwrite)")

    worker = ChunkWorker(model, source, settings, store, shapes)
    done = opened.done
    already = int(done.sum())
    _recover_messages(worker, done)
    if already and starts and progress:
        print(f"relprop: resuming {store}: {already} of {shapes.count} samples were done; explaining the rest",
              file=sys.stderr, flush=True)
    meter = _meter(shapes.count, already, progress)
    began = time.perf_counter()
    explained = 0

    def finished(count, failures):
        nonlocal explained
        explained += count - len(failures)
        meter.skipped += len(failures)

    try:
        if engine == "local":
            from .local import explain_chunks

            explain_chunks(worker, starts, 1 if workers is None else workers, _failure_recorder(worker), finished,
                           meter.update)
        else:
            from .ray_engine import explain_chunks

            explain_chunks(recipe, source, settings, store, shapes, starts, workers, address, worker, finished,
                           meter.update)
    finally:
        meter.close()
    seconds = time.perf_counter() - began
    _recover_messages(worker, opened.done)
    skipped = list(worker.group.attrs.get("skipped", []))
    return Summary(str(store), shapes.count, explained, already, skipped, seconds, store_module.size_on_disk(store))


def default_chunk(batch_size: int, keep: str, input_shape: tuple) -> int:
    """Whole batches adding up to about CHUNK_BYTES of relevance: small chunks cost a write per array each."""
    shape, dtype = store_module.relevance_layout(keep, input_shape)
    per_sample = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return batch_size * max(1, round(CHUNK_BYTES / (batch_size * per_sample)))


def note(text: str) -> None:
    """A line on stderr about an argument relprop changed or could not apply (shown even without progress)."""
    print(f"relprop: note: {text}", file=sys.stderr, flush=True)


def _labels_as_model_classes(source: Source, classes: int, target, class_map: dict | None) -> Source:
    """The source, its labels mapped to the model's classes by class_map; refused when labels that are not the
    model's classes would be explained as if they were."""
    names = source.class_names
    if class_map is not None:
        return MappedLabels(source, _checked_map(class_map, names, classes, source.spec), classes)
    if names is None:
        return source
    listed = f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
    if target == "label" and len(names) != classes:
        example = ",".join(f"{name}=N" for name in names[:2])
        plural = "s" if len(names) != 1 else ""
        raise RunError(f"the data set's labels are its {len(names)} class name{plural} ({listed}) but the model "
                       f"outputs {classes} classes, so --target label would explain the model's classes 0..{len(names) - 1} "
                       f"instead; use --target predicted, or map the names to the model's classes with --class-map "
                       f"{example} (N: the model's class index; or a JSON file of name: index; class_map= in "
                       "Python)")
    if len(names) > classes:
        raise RunError(f"the data set has {len(names)} classes ({listed}) but the model outputs {classes}; give the "
                       "model trained on these classes, a data set with the model's classes, or --class-map")
    return source


def _checked_map(class_map: dict, names: list | None, classes: int, spec: str) -> dict[int, int]:
    """class_map (name -> model class) as label -> model class, or RunError naming what does not fit."""
    if names is None:
        raise RunError(f"--class-map maps class names, but {spec} has none (a flat folder, or a data set without "
                       "`classes`); leave --class-map out")
    unknown = [name for name in class_map if name not in names]
    if unknown:
        raise RunError(f"--class-map names {', '.join(map(str, unknown))}, which {spec} does not have; its classes "
                       f"are {', '.join(names)}")
    missing = [name for name in names if name not in class_map]
    if missing:
        raise RunError(f"--class-map gives no model class for {', '.join(missing)}; map every class of {spec} "
                       f"({', '.join(names)})")
    for name, index in class_map.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < classes:
            raise RunError(f"--class-map maps {name} to {index!r}, but the model's classes are 0..{classes - 1}")
    return {label: class_map[name] for label, name in enumerate(names)}


class MappedLabels(Source):
    """A source whose labels are turned into the model's class indices; its class names are then the model's."""

    def __init__(self, source: Source, by_label: dict[int, int], classes: int):
        self.source, self.by_label = source, by_label
        self.spec, self.extras, self.labelled = source.spec, source.extras, source.labelled
        names = [f"class-{index}" for index in range(classes)]
        for label, index in sorted(by_label.items()):
            own = source.class_names[label]
            names[index] = own if names[index] == f"class-{index}" else f"{names[index]}+{own}"
        self.class_names = names

    def __len__(self):
        return len(self.source)

    def id(self, index):
        return self.source.id(index)

    def read(self, index):
        sample = self.source.read(index)
        return replace(sample, label=self.by_label.get(sample.label, sample.label))


def model_sha256(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, dtypes, shapes, values): the numbers a resumed run must share."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _dtype_of(model: torch.nn.Module) -> str | None:
    parameter = next(model.parameters(), None)
    return None if parameter is None else str(parameter.dtype).removeprefix("torch.")


def _preprocessing_of(preprocessing: Preprocessing | None) -> dict:
    """size, mean and std as the samples were made with them (None when the run was given none)."""
    if preprocessing is None:
        return {"size": None, "mean": None, "std": None}
    return {"size": preprocessing.size, "mean": [float(v) for v in preprocessing.mean],
            "std": [float(v) for v in preprocessing.std]}


def recorded(parameters: dict | None) -> dict:
    """Parameters as JSON values (tensors and tuples become lists), to record and compare them."""
    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.flatten().tolist() if value.numel() > 1 else value.item()
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        return value
    values = {name: plain(value) for name, value in (parameters or {}).items()}
    json.dumps(values)  # a value that cannot be recorded cannot be compared on resume either
    return values


def _composite_label(settings: Settings, composite_name: str | None):
    if settings.method != "lrp":
        return None
    if isinstance(settings.composite, str):
        return settings.composite
    return composite_name or type(settings.composite).__name__


def _composite_rules(settings: Settings, composite_name: str | None) -> str | None:
    """A composite given as an object without a name: its rules and their parameters in full (its class name alone
    would let a resumed run mix numbers of two parameterisations); a SHA-256 of them when longer than a line of
    text. None for a composite by name, or an object given a name (composite_name: `relprop run` builds its
    composite from --composite and records the name and --param), whose name and parameters identify it."""
    if settings.method != "lrp" or isinstance(settings.composite, str) or composite_name is not None:
        return None
    return rules_record(settings.composite)


def rules_record(composite) -> str:
    """What a store records of a composite object: its repr (every rule and parameter) in full, or a SHA-256 of it
    when longer than a line of text."""
    with _full_tensor_text():
        text = repr(composite)
    return text if len(text) <= 500 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _full_tensor_text():
    """Tensors written out whole by repr (bounds of a z^B rule, say), not abbreviated, while inside."""
    saved = torch._tensor_str.PRINT_OPTS.threshold
    torch.set_printoptions(threshold=sys.maxsize)
    try:
        yield
    finally:
        torch.set_printoptions(threshold=saved)


def _settings(method, composite, parameters, target, keep, batch_size) -> Settings:
    if isinstance(target, bool) or not (target in ("label", "predicted") or isinstance(target, int)):
        raise ValueError(f"target must be 'label', 'predicted' or a class index, got {target!r}")
    if isinstance(target, int) and target < 0:
        raise ValueError(f"target class index must be >= 0, got {target}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if method != "lrp" and composite is not None:
        raise ValueError(f"a composite is LRP's; method {method!r} takes none (leave composite out, or use "
                         "method='lrp')")
    if method == "lrp" and composite is None:
        composite = DEFAULT_COMPOSITE
    return Settings(method, composite, dict(parameters or {}), target, keep, batch_size)


def _model(model, weights, preprocessing):
    """(module, recipe for Ray actors, spec string, weights hash, preprocessing)."""
    if isinstance(model, str):
        model = ModelSpec(model, None if weights is None else str(weights))
    if isinstance(model, ModelSpec):
        from ..loading import load_model

        digest = None if model.weights is None else sha256(model.weights)
        if model.module is None or preprocessing is None:
            loaded = load_model(model.spec, model.weights)
            model.module, preprocessing = loaded.model, preprocessing or loaded.preprocessing
        return model.module, model, model.spec, digest, preprocessing
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a model spec such as 'demo', got {type(model).__name__}")
    if weights is not None:
        raise ValueError("weights= goes with a model spec; load the weights into the module yourself")
    return model, model, f"python:{type(model).__name__}", None, preprocessing


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _probe(model, source: Source) -> tuple[tuple, int, bool]:
    """(input shape, classes, whether samples have display pixels) from the first readable sample."""
    errors = []
    for index in range(len(source)):
        try:
            sample = source.read(index)
        except Exception as error:
            errors.append(f"{source.id(index)}: {' '.join(str(error).split())}")
            continue
        break
    else:
        raise RunError(f"none of the {len(source)} samples of {source.spec} could be read (first: {errors[0]})")
    output = _forward(model, sample)
    if output.dim() != 2 or output.shape[0] != 1:
        raise RunError(f"the model's output has shape {tuple(output.shape)} for one sample; relprop run stores "
                       "class scores (N, classes), so give a classifier")
    return tuple(sample.x.shape), int(output.shape[1]), sample.pixels is not None


def _forward(model, sample: Sample) -> torch.Tensor:
    parameter = next(model.parameters(), None)
    x = sample.x[None].to(parameter.device if parameter is not None else "cpu")
    try:
        with torch.no_grad():
            output = model(x)
    except Exception as error:
        raise RunError(f"the model fails on a sample of shape {tuple(sample.x.shape)}: "
                       f"{' '.join(str(error).split())}; check that the data set fits the model") from error
    if not isinstance(output, torch.Tensor):
        raise RunError(f"the model returned a {type(output).__name__}; relprop run needs a model returning a tensor "
                       "of class scores")
    return output


def _failure_recorder(worker: ChunkWorker):
    """Before a chunk is marked done, its failures replace whatever an interrupted attempt recorded for it."""
    def record(chunk):
        stop = chunk.start + len(chunk.arrays["id"])
        store_module.record_failures(worker.group, chunk.failures, chunk.start, stop)
    return record


def _recover_messages(worker: ChunkWorker, done):
    """Failed samples of done chunks whose message was lost (a kill between Ray's write and the driver's record)."""
    import numpy as np

    failed = np.flatnonzero(np.asarray(worker.group["failed"][:]) & done)
    listed = {entry["index"] for entry in worker.group.attrs.get("skipped", [])}
    missing = [int(index) for index in failed if int(index) not in listed]
    if not missing:
        return
    entries = []
    for index in missing:
        item = worker._read_one(index)
        error = item if isinstance(item, str) else "could not be read when it was explained (readable now)"
        entries.append({"index": index, "id": worker.source.id(index), "error": error})
    kept = list(worker.group.attrs.get("skipped", []))
    worker.group.attrs["skipped"] = sorted(kept + entries, key=lambda entry: entry["index"])


def _meter(total: int, done: int, enabled: bool):
    """A bar with samples/s and ETA on a terminal; elsewhere (logs, CI) one line per batch (per chunk with Ray).

    Skipped samples are counted on it (``skipped``) and listed by the caller at the end (the CLI prints each with its
    reason).
    """
    from ..progress import Progress

    return Progress(total, done, unit="sample", line=_sample_line, enabled=enabled, dynamic_ncols=True)


def _sample_line(meter) -> str:
    elapsed = meter.elapsed()
    rate = meter.new / elapsed if elapsed > 0 else float("nan")
    left = (meter.total - meter.done) / rate if rate > 0 else float("nan")
    eta = "?" if left != left else f"{int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
    skipped = f", {meter.skipped} skipped" if meter.skipped else ""
    return f"{meter.done}/{meter.total} samples, {rate:.1f} samples/s, ETA {eta}{skipped}"

