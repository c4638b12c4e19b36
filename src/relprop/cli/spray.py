"""``relprop spray``: Spectral Relevance Analysis of a store (:func:`relprop.analysis.spray.run`) and its report."""
from __future__ import annotations

from pathlib import Path

import click

from .options import Failure, staged


def cluster_counts(text: str):
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


@click.command()
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

    from ..analysis import pages as report
    from ..analysis import spray as spray_analysis

    ks = cluster_counts(clusters)
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
    with staged(out) as staging:
        report.write(store, staging.path, list(results), max_samples=max_samples, seed=seed)
        staging.commit()
    click.echo(f"wrote {store}/analysis and the report {out / 'index.html'}")


def report_folder(store: Path) -> Path:
    """Where `relprop spray` writes its report unless told: beside the store, named after it (run.zarr: run-spray)."""
    store = Path(store)
    return store.parent / f"{store.name.removesuffix('.zarr')}-spray"
