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

# Sets MMCV_FLAVOUR, MMCV_REASON, MMCV_CACHE_KEY, MMCV_LEGACY_CACHE_KEY, MMCV_ARCHS,
# MMCV_ARCH_DESCRIPTION, MMCV_CUDA_HOME, MMCV_CUDA_INCLUDES from the venv's torch.
# (The cache key names the venv's torch version and Python tag.)
read_plan() {
    local assignments
    assignments="$("$VPY" "$WHEEL_TOOL" mmcv-plan)"
    eval "$assignments"
    WHEELS="$CACHE_ROOT/wheels/$MMCV_CACHE_KEY"
}

print_plan() {
    log "mmcv $MMCV_VERSION flavour: $MMCV_FLAVOUR ($MMCV_REASON)"
    if [ "$MMCV_FLAVOUR" = cuda ]; then
        log "architectures: $MMCV_ARCH_DESCRIPTION"
        log "CUDA toolkit: $MMCV_CUDA_HOME" \
            "${MMCV_CUDA_INCLUDES:+(extra headers: $MMCV_CUDA_INCLUDES)}"
    fi
    log "wheel cache: $WHEELS"
}

if [ "$MODE" = plan ]; then
    if [ ! -x "$VPY" ]; then
        echo "--print-plan needs $VPY with torch installed (run $0 first, or set VENV)" >&2
        exit 1
    fi
    read_plan
    print_plan
    exit 0
fi

if [ ! -x "$VPY" ]; then
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

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

read_plan
print_plan

wheel_flavour() { "$VPY" "$WHEEL_TOOL" wheel-flavour "$1"; }
find_wheel() { ls "$1"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true; }

# The cached wheel of this plan, checked against its flavour; a CPU wheel of the cache layout
# before flavours were keyed is moved into its new folder once (see mmcv_wheels.find_cached_wheel).
MMCV_WHEEL="$("$VPY" "$WHEEL_TOOL" find-wheel --wheels-root "$CACHE_ROOT/wheels" \
    --key "$MMCV_CACHE_KEY" --legacy-key "$MMCV_LEGACY_CACHE_KEY" --flavour "$MMCV_FLAVOUR" \
    --mmcv-version "$MMCV_VERSION")"
mkdir -p "$WHEELS"

if [ -z "$MMCV_WHEEL" ]; then
    if [ "$MMCV_FLAVOUR" = cuda ]; then
        log "building mmcv $MMCV_VERSION with CUDA ops for $MMCV_ARCHS (about an hour per" \
            "architecture on 2 cores, see docs/gpu.md)"
        # mmcv's setup.py builds CUDA ops only with FORCE_CUDA=1 or a visible GPU. Two fixes
        # for CUDA 13 toolkits installed as here: torch guesses CUDA_HOME from the nvcc on
        # PATH, which may be a wrapper script outside the toolkit (then -lcudart fails), so
        # CUDA_HOME is the toolkit nvcc itself reports; and a toolkit without the math
        # libraries lacks cusparse.h, which ATen/cuda/CUDAContext.h includes: the headers of
        # torch's nvidia wheels go on CPATH, which both gcc and nvcc read.
        FLAVOUR_ENV=(FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=$MMCV_ARCHS" "CUDA_HOME=$MMCV_CUDA_HOME"
                     "CPATH=$MMCV_CUDA_INCLUDES${CPATH:+:$CPATH}")
    else
        log "building mmcv $MMCV_VERSION with CPU ops against torch $TORCH (11 to 24 min on" \
            "2 cores)"
        # mmcv's setup.py also builds CUDA ops when torch sees a GPU: hide it.
        FLAVOUR_ENV=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
    fi
    BUILD="$(mktemp -d)"
    START=$SECONDS
    # mmcv's setup.py imports pkg_resources (kept by setuptools<81) and torch (no build
    # isolation). pip, not uv, builds the sdist, reading none of the machine's pip settings
    # (PIP_CONFIG_FILE=/dev/null skips every config file; PIP_FIND_LINKS, which would add a
    # local wheel folder, is an environment variable and is unset). --no-cache-dir: pip would
    # otherwise hand back a wheel it built earlier, of whatever flavour, despite --no-binary.
    env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null MMCV_WITH_OPS=1 "${FLAVOUR_ENV[@]}" \
        MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$VPY" -m pip wheel --no-deps --no-build-isolation --no-binary mmcv --no-cache-dir \
        "mmcv==$MMCV_VERSION" -w "$BUILD"
    BUILT="$(find_wheel "$BUILD")"
    GOT="$(wheel_flavour "$BUILT")"
    if [ "$GOT" != "$MMCV_FLAVOUR" ]; then
        echo "[setup] ERROR: the mmcv wheel just built has $GOT ops, not $MMCV_FLAVOUR" \
            "($BUILT); see the compile log above" >&2
        exit 1
    fi
    mv "$BUILT" "$WHEELS"/
    rm -rf "$BUILD"
    MMCV_WHEEL="$(find_wheel "$WHEELS")"
    log "built $MMCV_WHEEL in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"
else
    log "using cached $MMCV_WHEEL ($MMCV_FLAVOUR ops)"
fi

if [ "$MODE" = wheel ]; then
    echo "$MMCV_WHEEL"
    exit 0
fi

log "installing mmcv, the toolboxes and test dependencies"
# mmcv comes from the wheel just built, so its pin is left out of what uv resolves;
# --reinstall-package: a venv holding mmcv of the same version but the other flavour would
# otherwise keep it.
"${UV[@]}" -q --reinstall-package mmcv "$MMCV_WHEEL" -r <(grep -v '^mmcv==' "$STACK") \
    -r "$ROOT/requirements/tests.txt"

log "installing dualformer_mm (editable) and compiling its partition ops"
# setup.py compiles dualformer_mm._ext: the CPU kernels always, the CUDA kernels too when nvcc
# and a CUDA torch are present, for the architectures of the same rule as mmcv's. A failed
# compile fails this script. --reinstall-package: uv would otherwise reuse its cached build of
# this directory after an edit of the C++/CUDA sources (it only watches setup.py).
MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${UV[@]}" -q --no-build-isolation \
    --reinstall-package dualformer_mm -e "$ROOT"

# Which flavour each compiled package ended with; a visible GPU with CPU-only ops fails here.
"$VPY" "$WHEEL_TOOL" check-install

"$VPY" - <<'PY'
import torch, torchvision, mmengine, mmcv, mmcv.ops, mmdet, mmseg, mmpretrain, dualformer_mm
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}")
PY
