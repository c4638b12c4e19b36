"""``relprop concepts``: Concept Relevance Propagation: one image's top concepts with their conditional heatmaps, or
a store's concept atlas found by relevance maximisation (:mod:`relprop.concepts`)."""
from __future__ import annotations

from pathlib import Path

import click

from ..loading import LoadError
from .options import Failure, build_composite, load_for_command, one_line, staged

@click.command(name="concepts")
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
    from ..concepts import maximise, pages as report
    from ..datasets import RunError, StoreError
    from ..attribution.lrp import LRP

    if image is None and store_path is None:
        raise Failure("give an IMAGE with --model for its concepts, or --store STORE for the concept atlas")
    if target != "auto" and not target.isdigit():
        raise Failure(f"--target must be auto or a class index (0, 1, ...), got {target!r}")
    try:
        with staged(out) as staging:
            if image is None:
                found = maximise(store_path, [layer], k=top, batch_size=batch_size, engine=engine, workers=workers,
                                 address=address)[layer]
                report.atlas_page(store_path, layer, staging.path, found, heatmaps=heatmaps)
                what = f"the concept atlas of {len(found.relevance_index)} channels of {layer}"
            else:
                if model_spec is None:
                    raise Failure("IMAGE needs --model (the model to explain)")
                from ..loading import open_image

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
        raise Failure(one_line(error)) from None
    click.echo(f"wrote {what}: {out / 'index.html'}")


