#!/usr/bin/env bash
# The test command: bootstrap the environments, then run the whole suite (slow architecture sweeps included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/lxt_venv.sh  # the LXT oracle runs there (tests/test_oracle_lxt.py)
export RELPROP_LXT_PYTHON="$PWD/.venv-lxt/bin/python"
scripts/virelay_venv.sh  # ViRelAy's loader opens an exported project there (tests/analysis/test_virelay.py)
export RELPROP_VIRELAY_PYTHON="$PWD/.venv-virelay/bin/python"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
