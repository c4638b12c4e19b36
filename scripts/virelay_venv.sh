#!/usr/bin/env bash
# Build .venv-virelay, a separate environment with ViRelAy (the viewer `relprop export virelay` writes for), so a
# test can open an exported project with ViRelAy's own loader (tests/analysis/test_virelay.py). relprop is not
# installed there: the test only hands it the exported files. 0.6.1: 1.0.0 needs Python >= 3.11.13 (we have
# 3.11.7); both read the same layout (source/backend/virelay/model.py). Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if venv_stale .venv-virelay scripts/virelay_venv.sh; then
    venv_pip "virelay==0.6.1"
    venv_check "import virelay.model"
    venv_done
fi
