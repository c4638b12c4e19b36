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

import importlib

import click

from .options import EXIT_SOME_FAILED, EXIT_USAGE, Failure

# command name -> (module of this package, the click command in it). A command's module is imported when the command
# runs (or when --help lists them all): `relprop spray` and `relprop export` read stores and never import torch, whose
# import alone is about 500 MiB of memory on a CUDA build.
COMMANDS = {
    "explain": ("explain", "explain"), "demo": ("demo", "demo"), "run": ("run", "run"), "verify": ("run", "verify"),
    "composites": ("listing", "list_composites"), "rules": ("listing", "list_rules"), "spray": ("spray", "spray"),
    "import": ("import_heatmaps", "import_heatmaps"), "export": ("export", "export"),
    "evaluate": ("evaluate", "evaluate_command"), "concepts": ("concepts", "concepts"),
    "correct": ("correct", "correct"),
}


class Commands(click.Group):
    """The `relprop` group: its commands load on first use (see COMMANDS)."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relprop", prog_name="relprop")
def main():
    """Layer-wise Relevance Propagation from the command line."""


__all__ = ["main", "Failure", "EXIT_SOME_FAILED", "EXIT_USAGE", "COMMANDS"]
