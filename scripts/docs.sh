#!/usr/bin/env bash
# Build the documentation site into site/ (static, opens from file:// with no network); strict: a broken link, a
# missing page or a docstring the reference cannot read fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export NO_MKDOCS_2_WARNING=1
exec .venv/bin/python -m mkdocs build --strict --quiet --site-dir "${1:-site}"
