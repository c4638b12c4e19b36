"""The command line page (docs/cli.md) names every subcommand of `relprop` and every option of each, so that the
page cannot fall behind `relprop COMMAND --help`."""
import pathlib
import re

import click

from relprop import cli

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def commands(group: click.Group, path=()):
    """(path, command) of every command that runs (groups such as `export` only hold others)."""
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))
        else:
            yield path + (name,), command


def sections() -> dict[str, str]:
    """The page's level-two sections by heading."""
    parts = re.split(r"^## (.+)$", PAGE.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_subcommand_has_a_section_that_names_each_of_its_options():
    found = sections()
    checked = 0
    for path, command in commands(cli.main):
        name = "relprop " + " ".join(path)
        section = next((text for heading, text in found.items()
                        if re.search(re.escape(name) + r"\b", heading)), None)
        assert section is not None, f"docs/cli.md has no section for `{name}`"
        for parameter in command.params:
            if isinstance(parameter, click.Option):
                for option in parameter.opts + parameter.secondary_opts:
                    assert f"`{option}" in section or f"/ {option}" in section, \
                        f"docs/cli.md's section on `{name}` does not name {option}"
                    checked += 1
    assert checked > 80  # every option of explain, run, spray, evaluate, ... was looked for


def test_the_check_tells_a_missing_option():
    spray = sections()["relprop spray"]
    assert "`--power" in spray and "`--no-such-option" not in spray
