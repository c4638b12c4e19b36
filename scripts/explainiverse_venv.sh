#!/usr/bin/env bash
# Build .venv-explainiverse, a second environment where relprop runs beside explainiverse 0.8.1 (LRPExplainer) as
# an oracle: explainiverse pins shap < 0.49 and scikit-learn < 1.6, older than what relprop's own environment has.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv-explainiverse/bin/python ] || "$PY" -m venv .venv-explainiverse
STAMP=.venv-explainiverse/.relprop-installed
WANT="$(cat pyproject.toml scripts/explainiverse_venv.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    .venv-explainiverse/bin/python -m pip install -q "torch==2.14.1" "explainiverse==0.8.1" "shap<0.49" \
        "scikit-learn<1.6" 2>&1 | grep -v "^WARNING: Location" || true
    # relprop without its dependencies: explainiverse pins numpy < 2, which zarr 3 (a relprop dependency the
    # oracle never touches) refuses; everything relprop imports at `import relprop` is there already.
    .venv-explainiverse/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
    .venv-explainiverse/bin/python -W ignore -c "import relprop; from explainiverse.explainers.gradient.lrp import LRPExplainer"
    echo "$WANT" > "$STAMP"
fi
