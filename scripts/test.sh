#!/usr/bin/env bash
# The test command: bootstrap the environments, then run the whole suite (slow architecture sweeps included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/lxt_venv.sh  # the LXT oracle runs there (tests/test_oracle_lxt.py)
export RELPROP_LXT_PYTHON="$PWD/.venv-lxt/bin/python"
scripts/quantus_venv.sh  # the Quantus oracle runs there (tests/test_oracle_quantus.py)
export RELPROP_QUANTUS_PYTHON="$PWD/.venv-quantus/bin/python"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
