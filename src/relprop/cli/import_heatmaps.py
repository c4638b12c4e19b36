"""``relprop import``: pre-computed heatmaps written into a store (:func:`relprop.datasets.from_arrays`)."""
from __future__ import annotations

from pathlib import Path

import click

from .options import Failure, one_line


@click.command(name="import")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option("--relevance", "relevance_file", required=True, type=click.Path(dir_okay=False, exists=True,
              path_type=Path), help="heatmaps: .npy (N, C, H, W), (N, H, W) or (N, D); or an .h5 of CoRelAy/ViRelAy "
              "layout (attribution, label, optional prediction and index)")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help=".npy of N integer labels (-1: unknown); required with a .npy --relevance")
@click.option("--images", "images_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="inputs for previews: .npy (N, C, H, W) in [0, 1] or uint8, or ViRelAy's input.h5 (data)")
@click.option("--output", "output_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help=".npy of the model's outputs (N, classes)")
@click.option("--ids", "ids_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="text file of N sample ids, one a line")
@click.option("--class-names", default=None, help="comma-separated class names, in class order")
@click.option("--chunk", type=click.IntRange(min=1), default=None, help="samples per store chunk (default: ~4 MiB)")
@click.option("--overwrite", is_flag=True, help="replace an existing store at STORE")
def import_heatmaps(store, relevance_file, labels_file, images_file, output_file, ids_file, class_names, chunk,
                    overwrite):
    """Write pre-computed heatmaps into a store, for `relprop spray` and `relprop export virelay`."""
    import numpy as np

    from .. import datasets
    from ..datasets import imported

    def npy(path):
        if path is None:
            return None
        if path.suffix != ".npy":
            raise Failure(f"{path}: give a .npy file (numpy.save) here")
        return np.load(path, mmap_mode="r", allow_pickle=False)  # read chunk by chunk, never whole

    try:
        if relevance_file.suffix in (".h5", ".hdf5"):
            images_h5 = images_file if images_file is not None and images_file.suffix in (".h5", ".hdf5") else None
            arrays = imported.read_h5(relevance_file, images_h5)
            if images_file is not None and images_h5 is None:
                arrays["images"] = npy(images_file)
        else:
            if labels_file is None:
                raise Failure("--labels is required with a .npy --relevance (an .h5 file carries its own)")
            arrays = {"relevance": npy(relevance_file), "images": npy(images_file)}
        if labels_file is not None:
            arrays["labels"] = npy(labels_file)
        if output_file is not None:
            arrays["output"] = npy(output_file)
        if ids_file is not None:
            arrays["ids"] = ids_file.read_text().splitlines()
        names = None if class_names is None else [name.strip() for name in class_names.split(",")]
        result = datasets.from_arrays(store, class_names=names, chunk=chunk, overwrite=overwrite,
                                      data=str(relevance_file), **arrays)
    except (ValueError, OSError, datasets.StoreError) as error:
        raise Failure(one_line(error)) from None
    click.echo(f"wrote {store}: {result.count} heatmaps of {result.attrs['classes']} classes; next: relprop spray "
               f"{store}")
