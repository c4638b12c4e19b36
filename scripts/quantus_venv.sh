#!/usr/bin/env bash
# Build .venv-quantus, a second environment where relprop runs beside Quantus 0.6 as an oracle and benchmark peer
# for relprop.evaluate: Quantus calls np.trapz, which NumPy 2.4 removed, so it needs numpy < 2.4. Idempotent and
# quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if venv_stale .venv-quantus pyproject.toml scripts/quantus_venv.sh; then
    venv_torch "torch==2.14.1" "torchvision==0.29.1"
    venv_pip "torch==2.14.1" "torchvision==0.29.1" "numpy<2.4"
    venv_pip -e ".[evaluate]" "numpy<2.4"
    venv_pip "quantus==0.6.0" "numpy<2.4"
    venv_check "import quantus, relprop, skimage, numpy; assert numpy.lib.NumpyVersion(numpy.__version__) < '2.4.0'"
    venv_done
fi
