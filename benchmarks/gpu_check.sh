#!/usr/bin/env bash
# One prepared GPU check of vitstem (issue 19), under 8 minutes on one H100 / H200, from a bare clone:
#   bash benchmarks/gpu_check.sh              # installs uv and the environment, runs every step, prints a table
#   bash benchmarks/gpu_check.sh --dry        # (or DRY=1) on a CPU: prints and composes every command, runs none
# Writes everything under OUT (default benchmarks/results/gpu_check/): precision.json, bench_<model>.json,
# runs/<step>/ (results.json of each training run), gpu_check.json (every step: command, exit, seconds) and
# summary.md (the table). The steps and their time limits: benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
DRY=${DRY:-0}
for arg in "$@"; do [[ $arg == --dry ]] && DRY=1; done

say() { echo "+ $*"; }
if [[ $DRY == 1 ]]; then
    say "command -v uv || pip install uv"
    say "uv sync"
    # the environment this check runs in when dry: PYTHON, else the project's (no install, no network)
    exec ${PYTHON:-uv run --no-sync python} benchmarks/gpu_check.py --dry --out "$OUT"
fi
command -v uv >/dev/null || pip install uv
uv sync
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec uv run --no-sync python benchmarks/gpu_check.py --out "$OUT"
