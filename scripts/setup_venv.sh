#!/usr/bin/env bash
# Creates .venv (if needed) and installs densessl with the extras asked for.
# Torch is pinned to the CPU build that lies on this kind of machine's disk; an unpinned
# torch would pull a multi-GB CUDA build. The package itself only declares torch>=2.1.
# Usage: scripts/setup_venv.sh [extras]   (default: test,docs,examples)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,docs,examples}"
TORCH_PIN="${DENSESSL_TORCH_PIN:-torch==2.13.0}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.densessl-setup-$(cat pyproject.toml scripts/setup_venv.sh | sha1sum | cut -c1-12)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_PIN"
  .venv/bin/python -m pip install -q -e ".[${extras}]" "$TORCH_PIN"
  touch "$stamp"
fi
