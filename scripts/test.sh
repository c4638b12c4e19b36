#!/usr/bin/env bash
# The test command: bootstrap the environment, then run the whole suite (slow architecture sweeps included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
