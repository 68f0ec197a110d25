#!/usr/bin/env bash
# Verify everything GPU-specific in one command (`make gpu-check`): tools/gpu_check.py's steps,
# written to work_dirs/gpu_check/report.{json,md}. Exits 0 when no step failed, 1 when one
# did, 2 without a CUDA GPU (one line says why). Options: --dry-run (every step that can, on
# the CPU at tiny sizes), --out DIR, --steps NAME... (see tools/gpu_check.py and docs/gpu.md).
#
# Python: $PYTHON if set, else the .venv that `make setup` builds, else python on PATH; the
# checkout goes on PYTHONPATH so that tier 1 runs from a checkout next to any torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then
        PYTHON="$ROOT/.venv/bin/python"
    else
        PYTHON=python
    fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
exec "$PYTHON" "$ROOT/tools/gpu_check.py" "$@"
