#!/usr/bin/env bash
# The prepared GPU run (issues 15/16): see benchmarks/gpu/orchestrate.py. On the GPU machine:
#   bash benchmarks/gpu/run.sh                 # everything, results in $OUT (default ./gpu-out)
#   bash benchmarks/gpu/run.sh --only parity   # a rerun of some stages; --list names them
# Here, before sending it: bash benchmarks/gpu/run.sh --dry-run   (or: make gpu-check)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${GPU_PY:-/opt/torch/.venv/bin/python}"  # the GPU machine's torch venv; GPU_PY overrides (e.g. a CPU dry run)
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HYPERP_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu/orchestrate.py "$@"
