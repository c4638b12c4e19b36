"""``relprop composites`` and ``relprop rules``: each with the first sentence of its docstring and its parameters."""
from __future__ import annotations

import re
import shutil
import textwrap

import click


@click.command(name="composites")
def list_composites():
    """List the composites with their parameters."""
    from .. import composites

    _print_listing([(name, signature, type(composites.get(name)).__doc__)
                    for name, signature, _ in composites.describe()])


@click.command(name="rules")
def list_rules():
    """List the rules with their parameters."""
    from .. import rules

    _print_listing([(name, signature, type(rules.get(name)).__doc__) for name, signature, _ in rules.describe()])


def first_sentence(doc: str | None) -> str:
    """A docstring's first sentence, whole (it may run over several lines; "et al. 2015" does not end it)."""
    text = " ".join((doc or "").split())
    end = re.search(r"[.!?](?=\s+[A-Z(`]|$)", text)
    return text[:end.end()] if end else text


def _print_listing(rows):
    """Name, first sentence of the docstring and parameters of each row, wrapped to the terminal's width."""
    width = max(len(name) for name, _, _ in rows)
    columns = max(60, shutil.get_terminal_size((100, 24)).columns)
    indent = " " * (width + 2)
    for name, signature, doc in rows:
        # annotations are strings under postponed evaluation; the listing shows names and defaults only
        signature = re.sub(r": '[^']*'", "", re.sub(r": '[^']*' = ", "=", signature))
        click.echo(textwrap.fill(first_sentence(doc), columns, initial_indent=f"{name.ljust(width)}  ",
                                 subsequent_indent=indent))
        click.echo(textwrap.fill(signature, columns, initial_indent=indent, subsequent_indent=indent + " "))
