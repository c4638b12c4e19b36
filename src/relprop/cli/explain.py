"""``relprop explain``: heatmaps, overlays and summary.json for image files and folders
(:func:`relprop.datasets.images.explain_to_folder`)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..loading import LoadError
from .options import (EXIT_SOME_FAILED, Failure, budget, build_method, load_for_command, method_names,
                      output_picker, parse_parameters, refuse_composite_without_lrp, resolve_device)


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES_OR_FOLDERS...")
@click.option("--model", "model_spec", required=True,
              help="demo | torchvision:NAME (e.g. torchvision:resnet50) | path/to/file.py:FACTORY")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="safetensors file or torch.save'd state dict (read with weights_only=True)")
@click.option("--method", default="lrp", show_default=True, type=click.Choice(sorted(method_names())),
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
    from .. import viz
    from ..datasets.images import ImagesError, explain_to_folder
    from ..loading import find_images
    from ..outputs import OutputError

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
    description = {"model": model_spec, "weights": None if weights is None else str(weights), "method": method,
                   "composite": composite if method == "lrp" else None, "parameters": parameters,
                   "output": output_key}
    try:
        result = explain_to_folder(files, attributor, loaded.preprocessing, out, labels=loaded.labels, target=target,
                                   output_format=output_format, batch_size=batch_size, device=torch_device,
                                   cmap=cmap, reduce=reduce, budget=budget(attributor, loaded.model, torch_device,
                                                                           pick),
                                   progress=lambda total: progress(total, batch_size),
                                   description=description)
    except ImagesError as error:
        raise Failure(str(error)) from None
    except OutputError as error:
        raise Failure(f"--out {error}") from None
    for failure in result.failures:
        click.echo(f"relprop: skipped {failure['file']}: {failure['error']}", err=True)
    used = composite if method == "lrp" else method
    click.echo(f"explained {len(result.records)} of {len(files)} images with {used}; wrote {out}")
    if result.failures:
        sys.exit(EXIT_SOME_FAILED)


def progress(total: int, batch_size: int):
    """A bar on a terminal, else one line per batch (images done of all, and the rate) when there is more than one
    batch."""
    from ..progress import Progress

    def line(meter):
        if total <= batch_size:
            return None
        rate = meter.done / max(meter.elapsed(), 1e-9)
        return f"relprop: {meter.done}/{meter.total} images ({rate:.2f} images/s)"
    return Progress(total, unit="image", line=line)
