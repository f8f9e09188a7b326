#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then the gland demo on built-in synthetic data (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test,docs,examples
export OMP_WAIT_POLICY=PASSIVE
.venv/bin/python -m examples.dpfr_gland.demo --out outputs/demo "$@"
