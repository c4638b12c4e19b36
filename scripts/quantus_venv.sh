#!/usr/bin/env bash
# Build .venv-quantus, a second environment where relprop runs beside Quantus 0.6 as an oracle and benchmark peer
# for relprop.evaluate: Quantus calls np.trapz, which NumPy 2.4 removed, so it needs numpy < 2.4. Idempotent and
# quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv-quantus/bin/python ] || "$PY" -m venv .venv-quantus
STAMP=.venv-quantus/.relprop-installed
WANT="$(cat pyproject.toml scripts/quantus_venv.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    .venv-quantus/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "numpy<2.4" 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv-quantus/bin/python -m pip install -q -e ".[evaluate]" "numpy<2.4" 2>&1 | grep -v "^WARNING: Location" || true
    .venv-quantus/bin/python -m pip install -q "quantus==0.6.0" "numpy<2.4" 2>&1 | grep -v "^WARNING: Location" || true
    .venv-quantus/bin/python -W ignore -c "import quantus, relprop, skimage, numpy; assert numpy.lib.NumpyVersion(numpy.__version__) < '2.4.0'"
    echo "$WANT" > "$STAMP"
fi
