#!/usr/bin/env bash
# Build .venv-lxt, a second environment where relprop runs beside LXT (the AttnLRP authors' implementation) as an
# oracle: LXT 2.1 needs transformers 4.x (it imports helpers that 5.x removed and replaces ALL_ATTENTION_FUNCTIONS
# by a plain dict), while relprop's own tests pin 5.23. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv-lxt/bin/python ] || "$PY" -m venv .venv-lxt
STAMP=.venv-lxt/.relprop-installed
WANT="$(cat pyproject.toml scripts/lxt_venv.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    # torchvision: LXT imports it for its ViT patches, even when they are not used
    .venv-lxt/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "transformers==4.57.6" 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv-lxt/bin/python -m pip install -q -e . 2>&1 | grep -v "^WARNING: Location" || true
    # LXT declares bitsandbytes, open_clip and accelerate, which its efficient engine does not use.
    .venv-lxt/bin/python -m pip install -q --no-deps "lxt==2.1" 2>&1 | grep -v "^WARNING: Location" || true
    .venv-lxt/bin/python -W ignore -c "import lxt.efficient, relprop, transformers"
    echo "$WANT" > "$STAMP"
fi
