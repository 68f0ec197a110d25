#!/usr/bin/env bash
# Create .venv/ with the pinned stack of requirements/stack.txt and this package.
#
#   tools/setup_env.sh                    install (what `make setup` runs)
#   tools/setup_env.sh --print-plan       print the mmcv flavour, architectures and cache folder
#                                         it would use, with the venv's torch; build nothing
#   tools/setup_env.sh --mmcv-wheel-only  build (or find) the mmcv wheel in the cache, print its
#                                         path; install neither mmcv nor dualformer_mm
#
# mmcv exists only as source for this torch, so its wheel is built here and cached outside the
# repo. Its flavour follows the machine: the CUDA ops when a GPU is visible
# (torch.cuda.is_available()), the CPU ops otherwise. DUALFORMER_MMCV_CUDA=1 builds the CUDA
# flavour without a GPU (a login node building for its GPU nodes), =0 the CPU flavour anyway.
# Architectures follow one rule for mmcv and dualformer_mm._ext (cuda_build.py, read by setup.py
# and by tools/install/mmcv_wheels.py, which plans the mmcv wheel):
# TORCH_CUDA_ARCH_LIST if set, else the visible GPU, else all of torch's with PTX for the newest.
# The cache folder is named after torch, Python, the flavour, CUDA and the architectures, so a
# second run takes seconds and a CPU wheel is never reused for a CUDA build.
#
# Environment: PYTHON (python3.11), VENV (.venv), DUALFORMER_CACHE (~/.cache/dualformer-mm),
# MAX_JOBS (compile jobs, default all cores), DUALFORMER_MMCV_CUDA (auto|1|0),
# DUALFORMER_CUDA (auto|1|0, see setup.py), TORCH_CUDA_ARCH_LIST.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-$ROOT/.venv}"
STACK="$ROOT/requirements/stack.txt"
CACHE_ROOT="${DUALFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dualformer-mm}"
UV_VERSION="0.13.9"
WHEEL_TOOL="$ROOT/tools/install/mmcv_wheels.py"  # stdlib + torch only: runs before mmcv exists

MODE=install
case "${1:-}" in
    '') ;;
    --print-plan) MODE=plan ;;
    --mmcv-wheel-only) MODE=wheel ;;
    *) echo "usage: $0 [--print-plan | --mmcv-wheel-only] (got '$1')" >&2; exit 2 ;;
esac

pin() {  # the pinned version of one package in the stack file
    sed -n "s/^$1==\([^ #]*\).*/\1/p" "$STACK"
}

MMCV_VERSION="$(pin mmcv)"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

VPY="$VENV/bin/python"

BUILD_MMCV="$ROOT/tools/install/build_mmcv.sh"  # plan, cache and build of the mmcv wheel

if [ "$MODE" = plan ]; then
    if [ ! -x "$VPY" ]; then
        echo "--print-plan needs $VPY with torch installed (run $0 first, or set VENV)" >&2
        exit 1
    fi
    bash "$BUILD_MMCV" "$VPY" "$MMCV_VERSION" --print-plan
    exit 0
fi

if [ ! -x "$VPY" ]; then
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

# uv, not pip: a machine's pip configuration may prefer a local torch+cpu wheel, which breaks
# the registry's torchvision (its compiled ops must match torch's build: the registry serves
# both for Linux x86_64 as CUDA builds, CPU-only builds live on PyTorch's own index); uv reads
# only the registry.
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
    log "installing uv $UV_VERSION"
    "$VPY" -m pip install -q "uv==$UV_VERSION"
fi
UV=("$VENV/bin/uv" pip install --python "$VPY")

TORCH="$(pin torch)"
log "installing torch $TORCH, torchvision and mmengine"
"${UV[@]}" -q "torch==$TORCH" "torchvision==$(pin torchvision)" "mmengine==$(pin mmengine)" \
    "setuptools<81" wheel ninja numpy pytest

# The wheel of the plan for this machine, from the cache or built (tools/install/build_mmcv.sh).
MMCV_WHEEL="$(bash "$BUILD_MMCV" "$VPY" "$MMCV_VERSION" | tail -n1)"

if [ "$MODE" = wheel ]; then
    echo "$MMCV_WHEEL"
    exit 0
fi

log "installing mmcv, the toolboxes, test and docs dependencies"
# mmcv comes from the wheel just built, so its pin is left out of what uv resolves;
# --reinstall-package: a venv holding mmcv of the same version but the other flavour would
# otherwise keep it.
"${UV[@]}" -q --reinstall-package mmcv "$MMCV_WHEEL" -r <(grep -v '^mmcv==' "$STACK") \
    -r "$ROOT/requirements/tests.txt" -r "$ROOT/requirements/docs.txt"

log "installing mmdeploy and what it imports (requirements/deploy.txt, without requirements)"
# mmdeploy 1.3.1 requires protobuf<=3.20.2, which onnx refuses: --no-deps, with every package it
# imports pinned in the file, so torch, mmcv, onnx, protobuf and numpy stay as installed above.
"${UV[@]}" -q --no-deps -r "$ROOT/requirements/deploy.txt"

log "installing dualformer_mm (editable) and compiling its partition ops"
# setup.py compiles dualformer_mm._ext: the CPU kernels always, the CUDA kernels too when nvcc
# and a CUDA torch are present, for the architectures of the same rule as mmcv's. A failed
# compile fails this script. --reinstall-package: uv would otherwise reuse its cached build of
# this directory after an edit of the C++/CUDA sources (it only watches setup.py).
MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${UV[@]}" -q --no-build-isolation \
    --reinstall-package dualformer_mm -e "$ROOT"

log "compiling the venv's Python files to bytecode"
bash "$ROOT/tools/install/compile_bytecode.sh" "$VPY"

# Which flavour each compiled package ended with; a visible GPU with CPU-only ops fails here.
"$VPY" "$WHEEL_TOOL" check-install

"$VPY" - <<'PY'
import torch, torchvision, mmengine, mmcv, mmcv.ops, mmdet, mmseg, mmpretrain, dualformer_mm
import mmdeploy
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}, "
      f"mmdeploy {mmdeploy.__version__}")
PY
