#!/usr/bin/env bash
# The test command: bootstrap the environments, then run the whole suite (slow architecture sweeps included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/lxt_venv.sh  # the LXT oracle runs there (tests/test_oracle_lxt.py)
export RELPROP_LXT_PYTHON="$PWD/.venv-lxt/bin/python"
scripts/explainiverse_venv.sh  # the explainiverse oracle runs there (tests/test_oracle_explainiverse.py)
export RELPROP_EXPLAINIVERSE_PYTHON="$PWD/.venv-explainiverse/bin/python"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
