#!/usr/bin/env bash
# Build .venv-oldest: a user's environment at the lower end of what relprop supports (torch 2.4.1, torchvision
# 0.19.1, Python 3.11), with relprop's runtime dependencies and pytest but NOT relprop itself:
# tests/test_packaging.py installs the freshly built wheel there and runs the core tests and the demo from it.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if venv_stale .venv-oldest pyproject.toml scripts/oldest_venv.sh; then
    venv_torch "torch==2.4.1" "torchvision==0.19.1"
    venv_pip "torch==2.4.1" "torchvision==0.19.1" pytest
    # relprop's own dependencies as pyproject.toml declares them (the packaging test checks that nothing is missing)
    "$VENV/bin/python" - <<'PY' > "$VENV/requirements.txt"
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
    venv_pip -r "$VENV/requirements.txt" "torch==2.4.1"
    venv_check "import torch, torchvision, zarr; assert torch.__version__.startswith('2.4.1')"
    venv_done
fi
