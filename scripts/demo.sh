#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then the DPFR recipe at demo size on the CPU, side
# by side with its baseline: CE-Net (ResNet-34) trained as a plain Mean Teacher and as DPFR
# (Mean Teacher + flow density perturbation + hard-anchor contrast) with the same seed and
# budget on built-in synthetic glands, beside supervised on the labelled images alone, all scored with the GlaS metrics on the same 16 test
# images; prints one table and where the pictures are.
# Extra arguments go to the comparison (e.g. --set iterations=50, --methods supervised dpfr).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test,docs,examples
export OMP_WAIT_POLICY=PASSIVE
.venv/bin/python -m examples.dpfr_gland.compare --config examples/dpfr_gland/configs/demo_cpu.json \
    --methods supervised mean_teacher dpfr --out outputs/demo "$@"
