"""Explain image files into a folder: a heatmap and an overlay PNG per image (and its relevance as .npy if asked),
and ``summary.json`` describing each image (predicted and explained class, output, relevance sum, residual) and
each image that was skipped, with the reason. This is what ``relprop explain`` runs.

Images are read and explained ``batch_size`` at a time; images of different shapes (no fixed preprocessing size)
are explained in groups of one shape, each group in parts that fit in memory (a :class:`relprop.memory.Budget`).
When a batch fails, its images are explained one by one so only the culprit is skipped. The folder is written
through :class:`relprop.outputs.Staging`: it replaces ``out`` whole once everything is written, or not at all.

Example:
    >>> from relprop import LRP
    >>> from relprop.loading import find_images, load_model
    >>> from relprop.datasets.images import explain_to_folder
    >>> loaded = load_model("demo")
    >>> result = explain_to_folder(find_images(["photos/"]), LRP(loaded.model, "epsilon_plus_flat"),
    ...                            loaded.preprocessing, "heatmaps", labels=loaded.labels)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..outputs import Staging

# What a model or method raises for an input it cannot take (wrong size, target out of range, a user's assert, out
# of memory).
MODEL_ERRORS = (ValueError, TypeError, RuntimeError, LookupError, ArithmeticError, AssertionError, MemoryError)


class ImagesError(Exception):
    """Nothing can be explained as asked (a batch will not fit in memory, or the model took no image); the message
    names the fix."""


@dataclass
class Result:
    """What :func:`explain_to_folder` wrote.

    Attributes:
        records: One dict per explained image, as in summary.json's ``images``.
        failures: One dict per skipped image (``file``, ``error``, ``stage``: read or model), as in ``failed``.
        summary: The whole of summary.json.
    """

    records: list
    failures: list
    summary: dict


def explain_to_folder(files, attributor, preprocessing, out, *, labels=None, target=None, output_format="png",
                      batch_size: int = 16, device="cpu", cmap="bwr", reduce="sum", budget=None, progress=None,
                      description: dict | None = None) -> Result:
    """Explain images into the folder ``out`` (replaced as a whole when done), with summary.json.

    Args:
        files: (image file, output name) pairs, as :func:`relprop.loading.find_images` returns them for files and
            folders (the output name mirrors sub-folders).
        attributor: The explainer, ``attributor(x, target) -> Explanation`` (LRP or a relprop.attribution method).
        preprocessing: The model's :class:`relprop.loading.Preprocessing` (size, mean, std).
        out: The folder to write.
        labels: A name per output class, for the records (or None).
        target: The class to explain (None: the predicted one).
        output_format: "png", or "npy" to also save each image's relevance.
        batch_size: Images read and explained at a time.
        device: Where the model runs.
        cmap: The heatmaps' colour map (see :mod:`relprop.viz.colormaps`).
        reduce: How colour channels become one heatmap: "sum", "positive" or "absolute".
        budget: A :class:`relprop.memory.Budget` to split batches that would not fit (None: no estimate).
        progress: Called with the number of images when explaining starts; returns something with
            ``update(images)`` and ``close()`` (e.g. a :class:`relprop.progress.Progress`). None: no progress.
        description: Entries put first in summary.json (e.g. the model and method used).

    Returns:
        A Result.

    Raises:
        ImagesError: when a batch of the preprocessing's fixed size will not fit in memory (before reading any
            image), or when the model could take none of the images (nothing is written).
        relprop.outputs.OutputError: when ``out`` cannot be replaced.
    """
    if budget is not None and preprocessing.size is not None:  # every image has this shape: refuse before reading
        shape = (preprocessing.channels, preprocessing.size, preprocessing.size)
        wanted = min(batch_size, len(files))
        if budget.fitting(shape, wanted) < wanted:
            raise ImagesError(budget.refusal(shape, wanted))
    with Staging(out) as staging:
        records, failures = explain_files(files, attributor, preprocessing, staging.path, labels=labels,
                                          target=target, output_format=output_format, batch_size=batch_size,
                                          device=device, cmap=cmap, reduce=reduce, budget=budget, progress=progress)
        if not records and failures and any(failure.get("stage") == "model" for failure in failures):
            first = next(failure for failure in failures if failure.get("stage") == "model")
            raise ImagesError(f"no image could be explained; {first['file']}: {first['error']}")
        summary = {
            **(description or {}), "target": "auto" if target is None else target,
            "preprocessing": {"size": preprocessing.size, "mean": list(preprocessing.mean),
                              "std": list(preprocessing.std)},
            "images": records, "failed": failures,
        }
        (staging.path / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        staging.commit()
    return Result(records, failures, summary)


def explain_files(files, attributor, preprocessing, folder, *, labels=None, target=None, output_format="png",
                  batch_size: int = 16, device="cpu", cmap="bwr", reduce="sum", budget=None,
                  progress=None) -> tuple[list, list]:
    """Read, explain and render images batch by batch into an existing folder (no summary, no staging).

    Args:
        files: (image file, output name) pairs, as :func:`relprop.loading.find_images` returns them.
        attributor: The explainer.
        preprocessing: The model's :class:`relprop.loading.Preprocessing`.
        folder: The folder to write into.
        labels: A name per output class, or None.
        target: The class to explain (None: the predicted one).
        output_format: "png", or "npy" to also save each image's relevance.
        batch_size: Images read and explained at a time.
        device: Where the model runs.
        cmap: The heatmaps' colour map.
        reduce: How colour channels become one heatmap.
        budget: A :class:`relprop.memory.Budget`, or None.
        progress: Called with the number of images when explaining starts; returns something with
            ``update(images)`` and ``close()``. None: no progress.

    Returns:
        (records, failures) as in :class:`Result`.
    """
    import numpy as np

    from ..loading import open_image

    folder = Path(folder)
    records, failures, used = [], [], set()
    meter = progress(len(files)) if progress is not None else None
    for start in range(0, len(files), batch_size):
        batch = []
        for path, name in files[start:start + batch_size]:
            try:
                batch.append(((path, name), preprocessing.pixels(open_image(path))))
            except ValueError as error:
                failures.append({"file": str(path), "error": str(error), "stage": "read"})
        # images of different sizes (when no size is set) are explained in groups of equal shape, each group in
        # parts that fit in memory
        pixels_of = dict(batch)
        for shape in dict.fromkeys(pixels.shape for _, pixels in batch):
            group = [(key, preprocessing.normalize(pixels)) for key, pixels in batch if pixels.shape == shape]
            fit = len(group) if budget is None else budget.fitting(tuple(shape), len(group))
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
                    records += _write(done, pixels, result, labels, folder, output_format, cmap, reduce, used)
        if meter is not None:
            meter.update(len(files[start:start + batch_size]))
    if meter is not None:
        meter.close()
    return records, failures


def explain_images(attributor, items: list, target, device):
    """Explain (key, input) items as one batch; when that fails, one by one to find the culprit.

    Args:
        attributor: The explainer.
        items: (key, input tensor) pairs of one shape.
        target: The class to explain (None: the predicted one).
        device: Where the model runs.

    Yields:
        (items, Explanation) for what worked and (item, error message) for each image that failed.
    """
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


def _write(items, pixels, explanation, labels, folder: Path, output_format, cmap, reduce, used: set) -> list[dict]:
    """Heatmap, overlay (and relevance) files of explained images, and their records for summary.json."""
    import numpy as np
    import torch

    from .. import viz

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


__all__ = ["explain_to_folder", "explain_files", "explain_images", "Result", "ImagesError", "MODEL_ERRORS"]
