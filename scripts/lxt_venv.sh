#!/usr/bin/env bash
# Build .venv-lxt, a second environment where relprop runs beside LXT (the AttnLRP authors' implementation) as an
# oracle: LXT 2.1 needs transformers 4.x (it imports helpers that 5.x removed and replaces ALL_ATTENTION_FUNCTIONS
# by a plain dict), while relprop's own tests pin 5.23. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if venv_stale .venv-lxt pyproject.toml scripts/lxt_venv.sh; then
    # torchvision: LXT imports it for its ViT patches, even when they are not used
    venv_torch "torch==2.14.1" "torchvision==0.29.1"
    venv_pip "torch==2.14.1" "torchvision==0.29.1" "transformers==4.57.6"
    venv_pip -e .
    # LXT declares bitsandbytes, open_clip and accelerate, which its efficient engine does not use.
    venv_pip --no-deps "lxt==2.1"
    venv_check "import lxt.efficient, relprop, transformers"
    venv_done
fi
