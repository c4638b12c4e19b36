#!/usr/bin/env bash
# The embedded demo: bootstrap the environment (a first run installs the pinned packages), then explain generated
# images with the shipped model, offline, and find the planted shortcut of the watermark data set with a store and
# SpRAy. Writes relprop-demo/ (demo.png, index.html, demo.json, watermark.zarr, spray/); pass --out DIR or other
# options through.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m relprop demo "$@"
