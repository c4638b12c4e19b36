"""``python -m relprop ...`` runs the command line, also where the ``relprop`` script is not installed."""
from .cli import main

main(prog_name="relprop")
