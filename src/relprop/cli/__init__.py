"""The command line: ``relprop explain``, ``relprop run``, ``relprop demo``, ``relprop composites``, ... one module
per command, and :mod:`relprop.cli.options` for what they share. The commands parse their options, call the
Python API and present its results; the work is done in the library.

Exit codes: 0 all done; 1 some images were skipped (unreadable, or the model cannot take them: they are listed, the
rest is written); 2 the command cannot run as given (unknown model, composite, parameter or device, weights that do
not fit, a batch that will not fit in memory): one line on stderr, nothing written.
Outputs are written into a hidden folder beside --out that replaces it as a whole when complete
(:class:`relprop.outputs.Staging`).
"""
from __future__ import annotations

import click

from .concepts import concepts
from .correct import correct
from .demo import demo
from .evaluate import evaluate_command
from .explain import explain
from .export import export
from .import_heatmaps import import_heatmaps
from .listing import list_composites, list_rules
from .options import EXIT_SOME_FAILED, EXIT_USAGE, Failure
from .run import run as run_command
from .run import verify
from .spray import spray


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relprop", prog_name="relprop")
def main():
    """Layer-wise Relevance Propagation from the command line."""


for _command in (explain, demo, run_command, verify, list_composites, list_rules, spray, import_heatmaps, export,
                 evaluate_command, concepts, correct):
    main.add_command(_command)

__all__ = ["main", "Failure", "EXIT_SOME_FAILED", "EXIT_USAGE"]
