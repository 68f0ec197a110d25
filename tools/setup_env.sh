#!/usr/bin/env bash
# Create .venv/ with the pinned stack of requirements/stack.txt and this package.
#
# Idempotent: a second run on the same machine takes seconds, because the mmcv wheel
# (which only exists as source and takes ~11 min to compile on 2 cores) is cached
# outside the repo, keyed by the torch and Python versions it was built against.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-$ROOT/.venv}"
STACK="$ROOT/requirements/stack.txt"
CACHE_ROOT="${DUALFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dualformer-mm}"
UV_VERSION="0.13.9"

pin() {  # the pinned version of one package in the stack file
    sed -n "s/^$1==\([^ #]*\).*/\1/p" "$STACK"
}

MMCV_VERSION="$(pin mmcv)"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# uv, not pip: this machine's pip config prefers a local torch+cpu wheel that breaks
# torchvision; uv reads only the registry.
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
    log "installing uv $UV_VERSION"
    "$VPY" -m pip install -q "uv==$UV_VERSION"
fi
UV=("$VENV/bin/uv" pip install --python "$VPY")

TORCH="$(pin torch)"
log "installing torch $TORCH, torchvision and mmengine"
"${UV[@]}" -q "torch==$TORCH" "torchvision==$(pin torchvision)" "mmengine==$(pin mmengine)" \
    "setuptools<81" wheel ninja numpy pytest

PYTAG="$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEELS="$CACHE_ROOT/wheels/torch-$TORCH-$PYTAG"
mkdir -p "$WHEELS"
MMCV_WHEEL="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$MMCV_WHEEL" ]; then
    log "building mmcv $MMCV_VERSION with ops against torch $TORCH (about 11 min on 2 cores)"
    BUILD="$(mktemp -d)"
    # mmcv's setup.py imports pkg_resources (kept by setuptools<81) and torch (no build isolation).
    # FORCE_CUDA=0: mmcv's CUDA ops would need a GPU to test; our own ops carry the CUDA code.
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$VPY" -m pip wheel --no-deps --no-build-isolation --no-binary mmcv \
        --index-url https://pypi.org/simple "mmcv==$MMCV_VERSION" -w "$BUILD"
    mv "$BUILD"/mmcv-*.whl "$WHEELS"/
    rm -rf "$BUILD"
    MMCV_WHEEL="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
else
    log "using cached $MMCV_WHEEL"
fi

log "installing mmcv, the toolboxes and test dependencies"
# mmcv comes from the wheel just built, so its pin is left out of what uv resolves.
"${UV[@]}" -q "$MMCV_WHEEL" -r <(grep -v '^mmcv==' "$STACK") -r "$ROOT/requirements/tests.txt"

log "installing dualformer_mm (editable) and compiling its partition ops"
# setup.py compiles dualformer_mm._ext: the CPU kernels always, the CUDA kernels too when nvcc
# and a CUDA torch are present (it derives CUDA_HOME from nvcc, the cusparse headers from the
# nvidia wheels, and defaults TORCH_CUDA_ARCH_LIST to sm_80 and sm_90). A failed compile
# fails this script. --reinstall-package: uv would otherwise reuse its cached build of this
# directory after an edit of the C++/CUDA sources (it only watches setup.py).
MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${UV[@]}" -q --no-build-isolation \
    --reinstall-package dualformer_mm -e "$ROOT"
"$VPY" - <<'PY'
import dualformer_mm._ext as ext
print(f"[setup] dualformer_mm._ext built, CUDA kernels: {ext.with_cuda()}")
PY

"$VPY" - <<'PY'
import torch, torchvision, mmengine, mmcv, mmcv.ops, mmdet, mmseg, mmpretrain, dualformer_mm
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}")
PY
