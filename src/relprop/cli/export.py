"""``relprop export``: a store written for other tools (``relprop export virelay``: a ViRelAy project)."""
from __future__ import annotations

from pathlib import Path

import click

from .options import Failure, staged


@click.group()
def export():
    """Export a store for other tools."""


@export.command(name="virelay")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for the project (project.yaml, HDF5 files, label map)")
def export_virelay(store, out):
    """Write a ViRelAy project (input, attribution and analysis HDF5 files, label map, project YAML)."""
    from ..analysis import virelay

    with staged(out) as staging:
        try:
            virelay.export(store, staging.path)
        except (FileNotFoundError, ValueError) as error:
            raise Failure(str(error)) from None
        staging.commit()
    click.echo(f"wrote {out / 'project.yaml'}; open it with: virelay {out / 'project.yaml'}")
