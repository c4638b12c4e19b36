"""``python -m relprop.cli ...`` runs the command line, as ``python -m relprop`` does."""
from . import main

main(prog_name="relprop")
