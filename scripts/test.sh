#!/usr/bin/env bash
# The test command: bootstrap the environments, then run the whole suite (slow architecture sweeps included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The demo page test opens the page in headless Chromium (Debian's package); install it where we may. It lives here,
# not in bootstrap.sh, so that the demo command never installs system packages.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "test: could not install chromium; the demo page test will be skipped" >&2
fi
scripts/lxt_venv.sh  # the LXT oracle runs there (tests/oracles/test_lxt.py)
export RELPROP_LXT_PYTHON="$PWD/.venv-lxt/bin/python"
scripts/explainiverse_venv.sh  # the explainiverse oracle runs there (tests/oracles/test_explainiverse.py)
export RELPROP_EXPLAINIVERSE_PYTHON="$PWD/.venv-explainiverse/bin/python"
scripts/virelay_venv.sh  # ViRelAy's loader opens an exported project there (tests/analysis/test_virelay.py)
export RELPROP_VIRELAY_PYTHON="$PWD/.venv-virelay/bin/python"
scripts/quantus_venv.sh  # the Quantus oracle runs there (tests/oracles/test_quantus.py)
export RELPROP_QUANTUS_PYTHON="$PWD/.venv-quantus/bin/python"
scripts/oldest_venv.sh  # the oldest torch relprop supports, for the packaging test (tests/test_packaging.py)
export RELPROP_OLDEST_PYTHON="$PWD/.venv-oldest/bin/python"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
