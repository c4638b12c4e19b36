"""``relprop run``: every sample of a data set explained into a resumable Zarr store (:func:`relprop.datasets.run`),
and ``relprop verify``: a store's done chunks checked against their checksums."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..attribution import registry
from ..loading import LoadError
from .options import (EXIT_SOME_FAILED, Failure, build_composite, load_for_command, method_names, one_line,
                      parameter_list, parse_class_map, parse_parameters, recorded, refuse_composite_without_lrp,
                      resolve_device, typed_parameters)


@click.command(name="run")
@click.argument("data", metavar="DATA")
@click.option("--model", "model_spec", required=True,
              help="demo | torchvision:NAME (e.g. torchvision:resnet50) | path/to/file.py:FACTORY")
@click.option("--store", "store_path", required=True, metavar="OUT.zarr",
              help="the Zarr store to write; an existing one made with the same arguments is resumed")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="safetensors file or torch.save'd state dict (read with weights_only=True)")
@click.option("--method", default="lrp", show_default=True, type=click.Choice(sorted(method_names())),
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
    from .. import datasets

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
        from .. import composites

        lrp_composite = build_composite(composite, given, loaded.preprocessing)
        parameters = recorded(typed_parameters(f"composite {composite}",
                                               parameter_list(type(composites.get(composite))), given))
    else:  # typed as `relprop explain` types them; the store records them as given (defaults are the registry's)
        parameters = typed_parameters(f"method {method}", registry.get(method).parameters(), given)
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
        raise Failure(one_line(error)) from None
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


@click.command(name="verify")
@click.argument("store", metavar="STORE")
def verify(store):
    """Check every done chunk of a store against its checksums; name the damaged ones (exit 1 if any)."""
    from .. import datasets

    try:
        opened = datasets.open_store(store)
        damaged = datasets.store.verify(opened.group)
    except datasets.StoreError as error:
        raise Failure(one_line(error)) from None
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
