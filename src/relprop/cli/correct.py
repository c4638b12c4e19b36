"""``relprop correct``: ClArC removes a shortcut a SpRAy cluster shows, and verifies it
(:func:`relprop.correct.pipeline.run`)."""
from __future__ import annotations

from pathlib import Path

import click

from ..loading import LoadError
from .options import Failure, load_for_command, one_line, staged

@click.command(name="correct")
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
    from ..correct import pipeline
    from ..datasets import StoreError

    try:
        if model_spec is None and (weights is not None or data is not None):  # the store's model, to take the
            # weights, and whose preprocessing reads the data
            from ..datasets.store import open_store

            model_spec = str(open_store(store).attrs["model"])
        loaded = load_for_command(model_spec, weights) if model_spec is not None else None
        model, source = (loaded.model, None) if loaded is not None else (None, None)
        if data is not None:
            from ..datasets import open_source

            source = open_source(data, loaded.preprocessing if loaded is not None else None)
        with staged(out) as staging:
            summary = pipeline.run(store, class_index, cluster, layer, method, staging.path, model=model,
                                   model_spec=model_spec, weights=weights, source=source, clustering=clustering,
                                   kind=kind, pooling=pooling, epochs=epochs, lr=lr, penalty=penalty, train=train,
                                   seed=seed, training=out.parent / f".{out.name}.training",
                                   progress=lambda text: click.echo(f"correct: {text}", err=True))
            staging.commit()
    except (LoadError, StoreError, FileNotFoundError, ValueError, TypeError) as error:
        raise Failure(one_line(error)) from None
    for name, figures in summary["metrics"].items():
        click.echo(f"{name}: " + ", ".join(f"{metric} {value:.3f}" for metric, value in figures.items()))
    click.echo(f"wrote {out / 'model.json'} (use it as --model) and the report {out / 'report' / 'index.html'}")


