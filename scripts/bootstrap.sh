#!/usr/bin/env bash
# Create .venv (Python 3.11) and install relprop with its test and peer extras; idempotent and quick when
# nothing changed (a stamp records the hash of what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
STAMP=.venv/.relprop-installed
WANT="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q -e ".[test,peers,cluster,analysis,export,evaluate,graph]" 2>&1 | grep -v "^WARNING: Location" || true
    # zennit 1.0.0 declares Python >= 3.11.11 while these machines run 3.11.7; it works, so ask pip not to check.
    .venv/bin/python -m pip install -q --no-deps --ignore-requires-python "zennit==1.0.0" 2>&1 \
        | grep -v "^WARNING: Location" || true
    # zennit-crp: the oracle of relprop.concepts (tests/concepts, benchmarks/bench_concepts.py), on top of zennit.
    .venv/bin/python -m pip install -q --no-deps "zennit-crp==0.6.0" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import relprop, torch, torchvision" 
    echo "$WANT" > "$STAMP"
fi
