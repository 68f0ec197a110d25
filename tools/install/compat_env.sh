#!/usr/bin/env bash
# One corner of the support range, installed and tested the way a user's environment is.
#
#   tools/install/compat_env.sh CORNER [--toolboxes] [--editable] [--demo] [--] [PYTEST ARGS]
#
# CORNER names requirements/compat-CORNER.txt (with --toolboxes compat-CORNER-toolboxes.txt),
# whose "# python: X.Y" line names the Python. The script
#   1. creates .venv-compat/CORNER (CORNER-toolboxes) with that Python ($PYTHON, python3.X
#      from PATH or pyenv's) and installs the file's packages there with uv: the user's
#      existing environment. An mmcv pin is built from its sdist against that torch by
#      tools/install/build_mmcv.sh, cached like the main install's wheel;
#   2. installs dualformer_mm into it with the README's command, `pip install
#      --no-build-isolation .` (`-e .` with --editable), from a copy of the checkout
#      (.venv-compat/CORNER-src), which compiles dualformer_mm._ext against that torch and
#      prints the kernels it builds and why;
#   3. fails unless torch, mmcv (or mmcv-lite) and numpy are exactly as before step 2 (version,
#      the files pip recorded, their modification times);
#   4. runs pytest there with the given arguments, from the copy (after a non-editable install
#      the copy's package is removed but for version.py, so the tests import the installed
#      one), then with --demo
#      `tools/run_demo.py --quick` (the three tasks, 2 iterations each).
# Each step prints its wall time.
#
# Environment: PYTHON, COMPAT_VENVS (.venv-compat), MAX_JOBS (compile jobs), DUALFORMER_CUDA
# (auto|1|0, see setup.py); CUDA_HOME / PATH decide which nvcc the build sees.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
USAGE="usage: $0 CORNER [--toolboxes] [--editable] [--demo] [--] [PYTEST ARGS...]"
CORNER="${1:?$USAGE}"
shift
NAME="$CORNER"
EDITABLE=()
DEMO=0
while [ $# -gt 0 ]; do
    case "$1" in
        --toolboxes) NAME="$CORNER-toolboxes" ;;
        --editable) EDITABLE=(-e) ;;
        --demo) DEMO=1 ;;
        --) shift; break ;;
        *) break ;;
    esac
    shift
done

REQ="$ROOT/requirements/compat-$NAME.txt"
[ -f "$REQ" ] || { echo "no corner file $REQ; $USAGE" >&2; exit 2; }
PY_VERSION="$(sed -n 's/^# python: *\([0-9.]*\).*/\1/p' "$REQ")"
VENVS="${COMPAT_VENVS:-$ROOT/.venv-compat}"
VENV="$VENVS/$NAME"
SRC="$VENVS/$NAME-src"
VPY="$VENV/bin/python"
UV_VERSION="0.13.9"

log() { printf '\033[1m[compat %s]\033[0m %s\n' "$NAME" "$*"; }
TIMES="$(mktemp)"
trap 'rm -f "$TIMES"' EXIT
child_cpu() {  # CPU seconds (user + system) of this script's finished children, into CPU
    times > "$TIMES"  # the builtin, in this shell (a pipe or $(...) would run it in a subshell)
    CPU=$(tail -n1 "$TIMES" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, t, /[ms]/);
                                          n += t[1] * 60 + t[2] } printf "%d", n }')
}
STEP_START=$SECONDS
child_cpu
STEP_CPU=$CPU
took() {  # wall time and CPU time of the step that just ended
    local cpu
    child_cpu
    cpu=$CPU
    log "$1: $(( SECONDS - STEP_START )) s wall, $(( cpu - STEP_CPU )) s CPU"
    STEP_START=$SECONDS
    STEP_CPU=$cpu
}

find_python() {  # python3.X from PATH, else a pyenv installation of 3.X
    if "python$PY_VERSION" -c '' 2>/dev/null; then echo "python$PY_VERSION"; return; fi
    local found
    found="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$PY_VERSION".*/bin/python"$PY_VERSION" \
        2>/dev/null | sort -V | tail -n1)"
    [ -n "$found" ] || { echo "no python$PY_VERSION on PATH or under pyenv; set PYTHON" >&2
                         exit 1; }
    echo "$found"
}

if [ ! -x "$VPY" ] || ! "$VPY" -c "import sys; assert sys.version.startswith('$PY_VERSION.')"
then
    PYTHON="${PYTHON:-$(find_python)}"
    rm -rf "$VENV"
    log "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
    "$VPY" -m pip install -q "uv==$UV_VERSION"
fi
UV=("$VENV/bin/uv" pip install -q --python "$VPY")
# uv reads only the package registry (no machine-wide pip settings); its cache is ~/.cache/uv.
log "installing $(grep -E '^(torch|numpy|mmengine|mmcv|mmcv-lite)==' "$REQ" | tr '\n' ' ')"
MMCV_PIN="$(sed -n 's/^mmcv==\([^ #]*\).*/\1/p' "$REQ")"
if [ -n "$MMCV_PIN" ]; then
    # torch and the build tools first: mmcv compiles against them.
    "${UV[@]}" -r <(grep -E '^(torch|numpy|setuptools|wheel|ninja)==' "$REQ")
    took 'environment (download and install)'
    MMCV_WHEEL="$(bash "$ROOT/tools/install/build_mmcv.sh" "$VPY" "$MMCV_PIN" | tail -n1)"
    took "mmcv $MMCV_PIN wheel"
    "${UV[@]}" --reinstall-package mmcv "$MMCV_WHEEL" -r <(grep -v '^mmcv==' "$REQ")
    took 'toolboxes (download and install)'
else
    "${UV[@]}" -r "$REQ"
    took 'environment (download and install)'
fi
# pip would have written the environment's bytecode for the user.
bash "$ROOT/tools/install/compile_bytecode.sh" "$VPY"
took 'bytecode of the environment'

snapshot() {  # version, RECORD digest, file count and newest file time of what the user has
    "$VPY" - <<'PY'
import hashlib, importlib.metadata as md, os
for name in ('torch', 'mmcv', 'mmcv-lite', 'numpy'):
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    record = dist.read_text('RECORD') or ''
    files = [dist.locate_file(f) for f in dist.files or []]
    newest = max((os.stat(f).st_mtime_ns for f in files if os.path.exists(f)), default=0)
    print(name, dist.version, hashlib.sha256(record.encode()).hexdigest()[:16], len(files),
          newest)
PY
}
BEFORE="$(snapshot)"

log "copying the checkout to $SRC"
rm -rf "$SRC"
mkdir -p "$SRC"
# The files git knows or would add (tracked and new, not ignored); a tracked file deleted in
# the working tree is skipped.
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -cf - -T - 2>/dev/null) | tar -xf - -C "$SRC"

log "pip install --no-build-isolation ${EDITABLE[*]} . (compiles dualformer_mm._ext)"
# The machine's pip configuration is skipped (PIP_CONFIG_FILE=/dev/null; PIP_FIND_LINKS unset):
# a user's environment has its own, and a machine-wide constraint would make pip replace the
# corner's torch, which is what this step checks pip never does. -v shows setup.py's own lines
# ("[dualformer_mm setup] building ..."), kept here, and the compile log, left out.
(cd "$SRC" && env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$VPY" -m pip install -v --no-build-isolation \
    "${EDITABLE[@]}" . > "$VENVS/$NAME-install.log" 2>&1) || {
    tail -n 40 "$VENVS/$NAME-install.log" >&2; exit 1; }
grep -a '\[dualformer_mm setup\]\|^Successfully installed' "$VENVS/$NAME-install.log" || true
took 'install of dualformer_mm (log: .venv-compat/'"$NAME"'-install.log)'

AFTER="$(snapshot)"
if [ "$BEFORE" != "$AFTER" ]; then
    echo "[compat $NAME] ERROR: installing dualformer_mm changed the environment:" >&2
    diff <(echo "$BEFORE") <(echo "$AFTER") >&2 || true
    exit 1
fi
log "untouched by the install: $(echo "$AFTER" | awk '{printf "%s %s (%s files); ", $1, $2, $4}')"

if [ ${#EDITABLE[@]} -eq 0 ]; then
    # The tests import the installed package. dualformer_mm/version.py stays: setup.py, which
    # the tests run, reads it by its path; a folder without __init__.py never shadows the
    # installed package (Python imports a namespace package only where no regular one exists).
    find "$SRC/dualformer_mm" -mindepth 1 -maxdepth 1 ! -name version.py -exec rm -rf {} +
fi
cd "$SRC"
"$VPY" -c "import dualformer_mm, dualformer_mm._ext as e, torch, numpy, mmengine, mmcv
print(f'[compat $NAME] dualformer_mm from {dualformer_mm.__file__}: torch {torch.__version__}, '
      f'numpy {numpy.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, '
      f'CUDA kernels: {e.with_cuda()}')"
status=0
if [ $# -gt 0 ]; then
    "$VPY" -m pytest -p no:cacheprovider "$@" || status=$?
    took 'tests'
fi
if [ "$DEMO" = 1 ] && [ $status = 0 ]; then
    "$VPY" tools/run_demo.py --quick --work-dir "$VENVS/$NAME-demo" \
        --data-root "$VENVS/$NAME-demo/data" || status=$?
    took 'demo (--quick)'
fi
exit $status
