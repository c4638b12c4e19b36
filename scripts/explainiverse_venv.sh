#!/usr/bin/env bash
# Build .venv-explainiverse, a second environment where relprop runs beside explainiverse 0.8.1 (LRPExplainer) as
# an oracle: explainiverse pins shap < 0.49 and scikit-learn < 1.6, older than what relprop's own environment has.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if venv_stale .venv-explainiverse pyproject.toml scripts/explainiverse_venv.sh; then
    venv_torch "torch==2.14.1"
    venv_pip "torch==2.14.1" "explainiverse==0.8.1" "shap<0.49" "scikit-learn<1.6"
    # relprop without its dependencies: explainiverse pins numpy < 2, which zarr 3 (a relprop dependency the
    # oracle never touches) refuses; everything relprop imports at `import relprop` is there already.
    venv_pip --no-deps -e .
    venv_check "import relprop; from explainiverse.explainers.gradient.lrp import LRPExplainer"
    venv_done
fi
