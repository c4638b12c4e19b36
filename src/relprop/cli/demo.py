"""``relprop demo``: the embedded model explained on generated images, and SpRAy finding a planted shortcut."""
from __future__ import annotations

from pathlib import Path

import click

from .options import Failure, staged


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("relprop-demo"),
              show_default=True, help="folder for demo.png, index.html and demo.json")
@click.option("--composite", "composite_names", multiple=True,
              help="composites to compare (repeatable; default: four common ones)")
@click.option("--count", type=click.IntRange(1, 32), default=8, show_default=True, help="how many images")
@click.option("--seed", type=int, default=7, show_default=True, help="which generated images")
def demo(out, composite_names, count, seed):
    """Explain generated images with the embedded model, no download: where does relevance land? Then explain a data
    set with a planted shortcut into a store and let SpRAy find it (watermark.zarr, spray/index.html)."""
    from .. import composites
    from ..tour import showcase

    for name in composite_names:
        if name not in composites.names():
            raise Failure(f"unknown composite {name!r}; choose one of {', '.join(composites.names())}")
    with staged(out) as staging:
        result = showcase.run(staging.path, composite_names or showcase.COMPOSITES, count, seed)
        staging.commit()
    click.echo(showcase.describe(result))
    click.echo(f"wrote {out / 'demo.png'}, {out / 'index.html'} and the SpRAy report {out / 'spray' / 'index.html'}")
