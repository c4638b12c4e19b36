#!/usr/bin/env bash
# Create .venv (Python 3.11) and install relprop with its test and peer extras; idempotent and quick when
# nothing changed (a stamp records the hash of what was installed; see scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if venv_stale .venv pyproject.toml scripts/bootstrap.sh; then
    venv_torch "torch==2.14.1" "torchvision==0.29.1"
    venv_pip -e ".[test,peers,cluster,analysis,export,evaluate,graph,docs,s3]"
    # zennit 1.0.0 declares Python >= 3.11.11 while these machines run 3.11.7; it works, so ask pip not to check.
    venv_pip --no-deps --ignore-requires-python "zennit==1.0.0"
    # zennit-crp: the oracle of relprop.concepts (tests/concepts, benchmarks/bench_concepts.py), on top of zennit.
    venv_pip --no-deps "zennit-crp==0.6.0"
    venv_check "import relprop, torch, torchvision"
    venv_done
fi
