#!/usr/bin/env bash
# Verify everything GPU-specific in one command (`make gpu-check`): the steps of the gpu_check
# package beside this script, written to work_dirs/gpu_check/report.{json,md}, whose last line
# says whether the CUDA kernels matched the reference on this GPU and so whether to set
# DUALFORMER_OPS=ext here. Exits 0 when no step failed, 1 when one did, 2 without a CUDA GPU
# (one line says why). Options: --dry-run (every step that can, on the CPU at tiny sizes),
# --out DIR, --steps NAME..., --tier 1 (see tools/gpu_check/__init__.py and docs/gpu.md).
#
# Python: $PYTHON if set, else the .venv that `make setup` builds, else python on PATH. tools/
# goes on PYTHONPATH (the gpu_check package) and the checkout too, so that it runs from a
# checkout; tier 1 needs a torch in the range dualformer_mm supports (dualformer_mm/compat.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then
        PYTHON="$ROOT/.venv/bin/python"
    else
        PYTHON=python
    fi
fi
export PYTHONPATH="$ROOT/tools:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
exec "$PYTHON" -m gpu_check "$@"
