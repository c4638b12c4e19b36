"""The command line: ``relprop explain``, ``relprop demo``, ``relprop composites``, ``relprop rules``.

Exit codes: 0 all done; 1 some images could not be read (they are listed, the rest is written); 2 the command
cannot run as given (unknown model, composite or weights that do not fit): one line on stderr, nothing written.
Outputs are written into a hidden folder beside --out and moved into place only when complete.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import click

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


def _parameter(text: str) -> tuple[str, object]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise Failure(f"--param takes NAME=VALUE (e.g. --param epsilon=0.25), got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return name.strip(), lowered == "true"
    try:
        return name.strip(), float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        raise Failure(f"--param {name}: expected a number or true/false, got {value!r}") from None


def _method(name):
    def build(model):
        from . import attribution

        if name == "occlusion":
            return attribution.Occlusion(model, window=(8, 8))
        return getattr(attribution, name)(model)
    return build


# The attribution methods --method offers, each built with its default parameters.
METHODS = {"lrp": None, "gradient": _method("Gradient"), "gradient_x_input": _method("GradientXInput"),
           "smoothgrad": _method("SmoothGrad"), "integrated_gradients": _method("IntegratedGradients"),
           "occlusion": _method("occlusion"), "guided_backprop": _method("GuidedBackprop"),
           "deconvnet": _method("Deconvnet"), "excitation_backprop": _method("ExcitationBackprop"),
           "deeplift": _method("DeepLift")}


def build_composite(name: str, parameters: dict, preprocessing):
    """The composite by name with its parameters; z^B bounds default to what the preprocessing can produce."""
    from . import composites

    if name not in composites.names():
        raise Failure(f"unknown composite {name!r}; choose one of {', '.join(composites.names())} "
                      "(relprop composites lists them with their parameters)")
    accepted = inspect.signature(type(composites.get(name))).parameters
    unknown = [key for key in parameters if key not in accepted]
    if unknown:
        raise Failure(f"composite {name} has no parameter {unknown[0]!r}; its parameters: {', '.join(accepted)}")
    parameters = dict(parameters)
    if "low" in accepted and "high" in accepted and preprocessing is not None:
        low, high = preprocessing.bounds()
        parameters.setdefault("low", low)
        parameters.setdefault("high", high)
    try:
        return composites.get(name, **parameters)
    except (TypeError, ValueError) as error:
        raise Failure(f"composite {name}: {error}") from None


def _device(name: str):
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Failure("--device cuda: CUDA is not available here; use --device cpu")
    return torch.device(name)


class Staging:
    """A hidden folder beside ``out`` to write into; ``commit`` moves its files into ``out``, else it vanishes."""

    def __init__(self, out: Path):
        if out.exists() and not out.is_dir():
            raise Failure(f"--out {out} is a file; give a folder (it is created if missing)")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))

    def commit(self):
        if not self.out.exists():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes the folder private; the result is an ordinary one
            os.replace(self.path, self.out)
            return
        for item in sorted(self.path.iterdir()):
            os.replace(item, self.out / item.name)
        self.path.rmdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


# ---- commands ---------------------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relprop", prog_name="relprop")
def main():
    """Layer-wise Relevance Propagation from the command line."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES_OR_FOLDER...")
@click.option("--model", "model_spec", required=True,
              help="demo | torchvision:NAME (e.g. torchvision:resnet50) | path/to/file.py:FACTORY")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="safetensors file or torch.save'd state dict (read with weights_only=True)")
@click.option("--method", default="lrp", show_default=True, type=click.Choice(sorted(METHODS)),
              help="lrp (with --composite), or another attribution method to compare with")
@click.option("--composite", default="epsilon_plus_flat", show_default=True,
              help="see `relprop composites`")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="a composite parameter, e.g. --param epsilon=0.25 (repeatable)")
@click.option("--target", default="auto", show_default=True, help="auto (the predicted class) or a class index")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-out"),
              show_default=True, help="folder for heatmaps, overlays and summary.json")
@click.option("--format", "output_format", type=click.Choice(["png", "npy"]), default="png", show_default=True,
              help="npy also saves the raw relevance of each image")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="resize the shorter side and centre-crop to SIZE (default: the model's; 224 for torchvision)")
@click.option("--mean", default=None, help="per-channel mean to subtract, e.g. 0.485,0.456,0.406")
@click.option("--std", default=None, help="per-channel std to divide by, e.g. 0.229,0.224,0.225")
@click.option("--cmap", default="bwr", show_default=True, help="bwr, seismic, coldnhot or any matplotlib map")
@click.option("--reduce", type=click.Choice(["sum", "positive", "absolute"]), default="sum", show_default=True,
              help="how colour channels are combined into one heatmap")
def explain(inputs, model_spec, weights, method, composite, params, target, out, output_format, batch_size, device,
            size, mean, std, cmap, reduce):
    """Explain images: one heatmap and one overlay PNG per image, and summary.json."""
    from . import viz
    from .loading import collect_images, load_model

    if target != "auto" and not target.isdigit():
        raise Failure(f"--target must be auto or a class index (0, 1, ...), got {target!r}")
    target = None if target == "auto" else int(target)
    try:
        viz.colormaps.get(cmap)
    except ValueError as error:
        raise Failure(f"--cmap: {error}") from None
    parameters = dict(_parameter(p) for p in params)
    torch_device = _device(device)
    try:
        files = collect_images(inputs)
        loaded = load_model(model_spec, weights)
        loaded.preprocessing = loaded.preprocessing.override(size, _floats(mean), _floats(std))
    except LoadError as error:
        raise Failure(str(error)) from None
    lrp_composite = build_composite(composite, parameters, loaded.preprocessing) if method == "lrp" else None
    if method != "lrp" and parameters:
        raise Failure("--param sets composite parameters, which only --method lrp uses")
    if model_spec.startswith("torchvision:") and weights is None:
        click.echo(f"relprop: note: {model_spec} has random weights (nothing is downloaded); pass --weights FILE "
                   "for trained ones", err=True)
    loaded.model.to(torch_device)

    with Staging(out) as staging:
        try:
            records, failures = _explain_files(files, loaded, lrp_composite, target, staging.path, output_format,
                                               batch_size, torch_device, cmap, reduce, method)
        except (ValueError, TypeError, RuntimeError) as error:  # the model or target does not fit the images
            raise Failure(" ".join(str(error).split())) from None
        summary = {
            "model": model_spec, "weights": None if weights is None else str(weights), "method": method,
            "composite": composite if method == "lrp" else None, "parameters": parameters, "target": "auto" if target is None else target,
            "preprocessing": {"size": loaded.preprocessing.size, "mean": list(loaded.preprocessing.mean),
                              "std": list(loaded.preprocessing.std)},
            "images": records, "failed": failures,
        }
        (staging.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        staging.commit()
    for failure in failures:
        click.echo(f"relprop: skipped {failure['file']}: {failure['error']}", err=True)
    used = composite if method == "lrp" else method
    click.echo(f"explained {len(records)} of {len(files)} images with {used}; wrote {out}")
    if failures:
        sys.exit(EXIT_SOME_FAILED)


def _explain_files(files, loaded, composite, target, folder: Path, output_format, batch_size, device, cmap, reduce,
                   method="lrp"):
    """Read, explain and render the images batch by batch; returns (records, failures)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from . import viz
    from .loading import open_image
    from .lrp import LRP

    attributor = LRP(loaded.model, composite) if method == "lrp" else METHODS[method](loaded.model)
    preprocessing = loaded.preprocessing
    records, failures, used = [], [], set()
    progress = tqdm(total=len(files), unit="image", disable=None, file=sys.stderr, leave=False)
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            try:
                batch.append((path, preprocessing.pixels(open_image(path))))
            except ValueError as error:
                failures.append({"file": str(path), "error": str(error)})
        # images of different sizes (when no --size is set) are explained in groups of equal shape
        for shape in dict.fromkeys(pixels.shape for _, pixels in batch):
            group = [(path, pixels) for path, pixels in batch if pixels.shape == shape]
            pixels = torch.stack([p for _, p in group])
            x = preprocessing.normalize(pixels).to(device)
            explanation = attributor(x, target)
            relevance = explanation.relevance.cpu()
            heatmaps = viz.heatmap(relevance, cmap=cmap, reduce=reduce)
            overlays = viz.overlay(pixels, relevance, cmap=cmap, reduce=reduce)
            scale = max(1, 256 // max(shape[1:]))  # tiny inputs (e.g. 32 px) are enlarged to be seen
            output = explanation.output.reshape(len(group), -1)
            for i, (path, _) in enumerate(group):
                stem = _unique(path.stem, used)
                record = {"file": str(path), "heatmap": f"{stem}.heatmap.png", "overlay": f"{stem}.overlay.png"}
                viz.save_image(heatmaps[i], folder / record["heatmap"], scale=scale)
                viz.save_image(overlays[i], folder / record["overlay"], scale=scale)
                if output_format == "npy":
                    record["relevance"] = f"{stem}.relevance.npy"
                    np.save(folder / record["relevance"], relevance[i].numpy())
                predicted = int(output[i].argmax())
                explained = None if explanation.target is None else int(explanation.target[i])
                record.update({
                    "predicted": predicted, "predicted_label": _label(loaded.labels, predicted),
                    "target": explained, "target_label": _label(loaded.labels, explained),
                    "output": float(explanation.explained[i]), "relevance_sum": float(explanation.relevance_sum[i]),
                    "residual": float(explanation.delta[i]),
                })
                records.append(record)
        progress.update(len(files[start:start + batch_size]))
    progress.close()
    return records, failures


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
    """Explain generated images with the embedded model, no download: where does relevance land?"""
    from . import composites
    from .demo import showcase

    for name in composite_names:
        if name not in composites.names():
            raise Failure(f"unknown composite {name!r}; choose one of {', '.join(composites.names())}")
    with Staging(out) as staging:
        result = showcase.run(staging.path, composite_names or showcase.COMPOSITES, count, seed)
        staging.commit()
    click.echo(showcase.describe(result))
    click.echo(f"wrote {out / 'demo.png'} and {out / 'index.html'}")


@main.command(name="composites")
def list_composites():
    """List the composites with their parameters."""
    from . import composites

    _print_listing(composites.describe())


@main.command(name="rules")
def list_rules():
    """List the rules with their parameters."""
    from . import rules

    _print_listing(rules.describe())


def _print_listing(rows):
    width = max(len(name) for name, _, _ in rows)
    for name, signature, summary in rows:
        # annotations are strings under postponed evaluation; the listing shows names and defaults only
        signature = re.sub(r": '[^']*'", "", re.sub(r": '[^']*' = ", "=", signature))
        click.echo(f"{name.ljust(width)}  {summary}")
        click.echo(f"{' ' * width}  {signature}")


# The ground-truth benchmark of the README: every composite that fits a CNN and the attribution methods beside it.
DEMO_METHODS = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
                "epsilon_alpha2_beta1_flat", "gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
                "deeplift", "occlusion", "guided_backprop")
DEMO_METRICS = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game", "aopc", "randomisation",
                "randomisation_last")


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
@click.option("--patch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="AOPC's region size in pixels")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-evaluation"),
              show_default=True, help="folder for table.md, table.csv, ranking.csv, scores.csv and report.html")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="samples per batch and perturbed copies per forward pass")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option("--size", type=click.IntRange(min=1), default=None, help="resize and centre-crop images to SIZE")
def evaluate_command(data, model_spec, weights, method_names, metric_names, count, patch_size, out, batch_size,
                     device, size):
    """Measure explanations: DATA is demo (generated images with object masks) or image files/folders."""
    from . import composites
    from .evaluate import benchmark, methods as evaluate_methods
    from .evaluate.benchmark import METRICS
    from .evaluate.sources import DemoImages, ImageFiles
    from .loading import collect_images, load_model

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
    torch_device = _device(device)
    try:
        loaded = load_model(model_spec, weights)
        loaded.preprocessing = loaded.preprocessing.override(size, None, None)
        source = DemoImages(count) if data == "demo" else ImageFiles(collect_images([data]), loaded.preprocessing)
    except LoadError as error:
        raise Failure(str(error)) from None
    low, high = loaded.preprocessing.bounds()
    method_options = {name: {"low": low, "high": high} for name in methods
                      if name in composites.names() and name == "epsilon_gamma_box"}
    loaded.model.to(torch_device)
    with Staging(out) as staging:
        try:
            result = benchmark(loaded.model, source, methods, metrics, batch_size=batch_size, progress=True,
                               device=torch_device, method_options=method_options,
                               options={"aopc": {"patch_size": patch_size}, "aopc_lerf": {"patch_size": patch_size},
                                        "selectivity": {"patch_size": patch_size}})
        except (ValueError, TypeError, RuntimeError) as error:
            raise Failure(" ".join(str(error).split())) from None
        result.save(staging.path)
        staging.commit()
    click.echo(result.markdown())
    for (method, metric), error in result.errors.items():
        click.echo(f"relprop: {method} / {metric} not computed: {error}", err=True)
    failed = getattr(source, "failed", [])
    for failure in failed:
        click.echo(f"relprop: skipped {failure['file']}: {failure['error']}", err=True)
    click.echo(f"evaluated {len(methods)} methods by {len(metrics)} metrics on {len(source) - len(failed)} samples; "
               f"wrote {out}")
    if failed:
        sys.exit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    main()
