#!/usr/bin/env bash
# The mmcv wheel for an environment's torch: taken from the cache, or built from the sdist.
#
#   tools/install/build_mmcv.sh PYTHON MMCV_VERSION [--print-plan]
#
# PYTHON is the environment's interpreter (torch, setuptools<81, wheel and ninja installed).
# The flavour (CUDA or CPU ops), its architectures and the cache folder come from
# tools/install/mmcv_wheels.py (mmcv-plan): the folder is named after torch, Python, the
# flavour, CUDA and the architectures, so a second build takes seconds and a CPU wheel is never
# reused for a CUDA build. Prints the plan on stderr and the wheel's path as the last line of
# stdout. With --print-plan it prints the plan only and builds nothing.
#
# Environment: DUALFORMER_CACHE (~/.cache/dualformer-mm), MAX_JOBS (compile jobs, default all
# cores), DUALFORMER_MMCV_CUDA (auto|1|0), TORCH_CUDA_ARCH_LIST.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VPY="${1:?usage: $0 PYTHON MMCV_VERSION [--print-plan]}"
MMCV_VERSION="${2:?usage: $0 PYTHON MMCV_VERSION [--print-plan]}"
CACHE_ROOT="${DUALFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dualformer-mm}"
WHEEL_TOOL="$ROOT/tools/install/mmcv_wheels.py"  # stdlib + torch only: runs before mmcv exists

PLAN_ONLY=0
[ "${3:-}" = --print-plan ] && PLAN_ONLY=1
log() {  # on stderr, or on stdout when only the plan is asked for
    if [ "$PLAN_ONLY" = 1 ]; then printf '\033[1m[setup]\033[0m %s\n' "$*"
    else printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; fi
}

# MMCV_FLAVOUR, MMCV_REASON, MMCV_CACHE_KEY, MMCV_LEGACY_CACHE_KEY, MMCV_ARCHS,
# MMCV_ARCH_DESCRIPTION, MMCV_CUDA_HOME, MMCV_CUDA_INCLUDES, from the environment's torch.
PLAN="$("$VPY" "$WHEEL_TOOL" mmcv-plan)"
eval "$PLAN"
WHEELS="$CACHE_ROOT/wheels/$MMCV_CACHE_KEY"
log "mmcv $MMCV_VERSION flavour: $MMCV_FLAVOUR ($MMCV_REASON)"
if [ "$MMCV_FLAVOUR" = cuda ]; then
    log "architectures: $MMCV_ARCH_DESCRIPTION"
    log "CUDA toolkit: $MMCV_CUDA_HOME" \
        "${MMCV_CUDA_INCLUDES:+(extra headers: $MMCV_CUDA_INCLUDES)}"
fi
log "wheel cache: $WHEELS"
if [ "$PLAN_ONLY" = 1 ]; then
    exit 0
fi

find_wheel() { ls "$1"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true; }

# The cached wheel of this plan, checked against its flavour; a CPU wheel of the cache layout
# before flavours were keyed is moved into its new folder once (mmcv_wheels.find_cached_wheel).
MMCV_WHEEL="$("$VPY" "$WHEEL_TOOL" find-wheel --wheels-root "$CACHE_ROOT/wheels" \
    --key "$MMCV_CACHE_KEY" --legacy-key "$MMCV_LEGACY_CACHE_KEY" --flavour "$MMCV_FLAVOUR" \
    --mmcv-version "$MMCV_VERSION")"
if [ -n "$MMCV_WHEEL" ]; then
    log "using cached $MMCV_WHEEL ($MMCV_FLAVOUR ops)"
    echo "$MMCV_WHEEL"
    exit 0
fi

TORCH="$("$VPY" -c 'import torch; print(torch.__version__)')"
if [ "$MMCV_FLAVOUR" = cuda ]; then
    log "building mmcv $MMCV_VERSION with CUDA ops for $MMCV_ARCHS against torch $TORCH (about" \
        "an hour per architecture on 2 cores, see docs/gpu.md)"
    # mmcv's setup.py builds CUDA ops only with FORCE_CUDA=1 or a visible GPU. Two fixes for
    # CUDA 13 toolkits installed as here: torch guesses CUDA_HOME from the nvcc on PATH, which
    # may be a wrapper script outside the toolkit (then -lcudart fails), so CUDA_HOME is the
    # toolkit nvcc itself reports; and a toolkit without the math libraries lacks cusparse.h,
    # which ATen/cuda/CUDAContext.h includes: the headers of torch's nvidia wheels go on CPATH,
    # which both gcc and nvcc read.
    FLAVOUR_ENV=(FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=$MMCV_ARCHS" "CUDA_HOME=$MMCV_CUDA_HOME"
                 "CPATH=$MMCV_CUDA_INCLUDES${CPATH:+:$CPATH}")
else
    log "building mmcv $MMCV_VERSION with CPU ops against torch $TORCH (11 to 24 min on 2 cores)"
    # mmcv's setup.py also builds CUDA ops when torch sees a GPU: hide it.
    FLAVOUR_ENV=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
fi
BUILD="$(mktemp -d)"
START=$SECONDS
SOURCE="mmcv==$MMCV_VERSION"
# The headers of torch 2.14 and newer need C++20 (ATen.h stops at an #error below it), while
# mmcv 2.1.0's setup.py passes -std=c++17 for any torch after 1.12.1, after torch's own -std
# flag. For such a torch the sdist is unpacked and its setup.py's -std=c++14/17 become
# -std=c++20; the C++ sources compile unchanged. Other torches build the sdist as published.
ATEN_H="$("$VPY" -c 'import os, torch
print(os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "ATen.h"))')"
if grep -q 'C++20 or later compatible compiler is required' "$ATEN_H" 2>/dev/null; then
    env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$VPY" -m pip download -q --no-deps \
        --no-binary :all: --no-cache-dir "mmcv==$MMCV_VERSION" -d "$BUILD/sdist" >&2
    tar -xzf "$BUILD/sdist/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD/sdist"
    SOURCE="$BUILD/sdist/mmcv-$MMCV_VERSION"
    if ! grep -q "'-std=c++1[47]'" "$SOURCE/setup.py"; then
        echo "[setup] ERROR: torch $TORCH needs C++20 and mmcv $MMCV_VERSION's setup.py has" \
            "no -std=c++14/17 flag to raise; build mmcv by hand with -std=c++20" >&2
        exit 1
    fi
    sed -i "s/'-std=c++1[47]'/'-std=c++20'/g" "$SOURCE/setup.py"
    log "torch $TORCH needs C++20: mmcv's setup.py asks for it instead of C++14/17"
fi
# mmcv's setup.py imports pkg_resources (kept by setuptools<81) and torch (no build
# isolation). pip builds the sdist reading none of the machine's pip settings
# (PIP_CONFIG_FILE=/dev/null skips every config file; PIP_FIND_LINKS, which would add a local
# wheel folder, is an environment variable and is unset). --no-cache-dir: pip would otherwise
# hand back a wheel it built earlier, of whatever flavour, despite --no-binary. pip's log goes
# to stderr: stdout carries only the wheel's path.
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null MMCV_WITH_OPS=1 "${FLAVOUR_ENV[@]}" \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$VPY" -m pip wheel --no-deps --no-build-isolation --no-binary mmcv --no-cache-dir \
    "$SOURCE" -w "$BUILD" >&2
BUILT="$(find_wheel "$BUILD")"
GOT="$("$VPY" "$WHEEL_TOOL" wheel-flavour "$BUILT")"
if [ "$GOT" != "$MMCV_FLAVOUR" ]; then
    echo "[setup] ERROR: the mmcv wheel just built has $GOT ops, not $MMCV_FLAVOUR ($BUILT);" \
        "see the compile log above" >&2
    exit 1
fi
mkdir -p "$WHEELS"
mv "$BUILT" "$WHEELS"/
rm -rf "$BUILD"
MMCV_WHEEL="$(find_wheel "$WHEELS")"
log "built $MMCV_WHEEL in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"
echo "$MMCV_WHEEL"
