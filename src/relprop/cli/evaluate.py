"""``relprop evaluate``: explanations measured by metrics (:func:`relprop.evaluate.benchmark`), on the demo's images
with object masks or on image files."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..loading import LoadError
from .options import (EXIT_SOME_FAILED, Failure, load_for_command, one_line, parameter_list, resolve_device,
                      staged)

# The ground-truth benchmark of docs/how-to/evaluate.md: every composite that fits a CNN and the attribution methods
# beside it.
DEMO_METHODS = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
                "epsilon_alpha2_beta1_flat", "gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
                "deeplift", "occlusion", "guided_backprop")
DEMO_METRICS = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game", "aopc", "randomisation",
                "randomisation_last")
# Occlusion's window here: 4x4, as `relprop evaluate` has always used (sized for the demo's 32x32 images; the table
# of docs/how-to/evaluate.md was measured with it), where the method's own default is 8x8 (relprop.attribution.registry)
OCCLUSION_WINDOW = (4, 4)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _names(values, default):
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or list(default)


@click.command(name="evaluate")
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
    from .. import composites
    from ..evaluate import benchmark, methods as evaluate_methods
    from ..evaluate.benchmark import METRICS
    from ..datasets.work import ModelSpec, RunError
    from ..evaluate.batches import DemoImages, ImageFiles
    from ..loading import collect_images

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
    if "occlusion" in methods:
        method_options["occlusion"] = {"window": OCCLUSION_WINDOW}
    loaded.model.to(torch_device)
    with staged(out) as staging:
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
            raise Failure(one_line(error)) from None
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


