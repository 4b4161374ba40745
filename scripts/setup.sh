#!/usr/bin/env bash
# Create .venv (if missing) and install AutoDistiller with its pinned dependencies, the REST service's
# (the `service` extra) and the test tools (`dev`).
# torch is pinned in the same pip call so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev,service]"
