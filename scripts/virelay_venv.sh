#!/usr/bin/env bash
# Build .venv-virelay, a separate environment with ViRelAy (the viewer `relprop export virelay` writes for), so a
# test can open an exported project with ViRelAy's own loader (tests/test_export_virelay.py). relprop is not
# installed there: the test only hands it the exported files. 0.6.1: 1.0.0 needs Python >= 3.11.13 (we have
# 3.11.7); both read the same layout (source/backend/virelay/model.py). Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv-virelay/bin/python ] || "$PY" -m venv .venv-virelay
STAMP=.venv-virelay/.relprop-installed
WANT="$(sha256sum scripts/virelay_venv.sh | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    .venv-virelay/bin/python -m pip install -q "virelay==0.6.1" 2>&1 | grep -v "^WARNING: Location" || true
    .venv-virelay/bin/python -W ignore -c "import virelay.model"
    echo "$WANT" > "$STAMP"
fi
