#!/usr/bin/env bash
# Write the .pyc files of every package in a venv's site-packages, as `pip install` does and
# `uv pip install` does not by default (its --compile-bytecode compiles only what that call
# installs).
#
#   tools/install/compile_bytecode.sh VENV_PYTHON
#
# Where PYTHONDONTWRITEBYTECODE is set, as in many CI and container images, no interpreter
# writes them later, and each one compiles torch's sources again: `import dualformer_mm` took
# 9.0 s without them and 4.0 s with them (2-core AMD EPYC, torch 2.13.0, Python 3.11).
# Files whose bytecode is up to date are not written again. A file that cannot compile (torch
# ships one in Python 3.12 syntax) is left without bytecode, as pip leaves it, and its error is
# not shown.
set -euo pipefail
VPY="${1:?usage: $0 VENV_PYTHON}"
SITE="$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
"$VPY" -m compileall -q -q -j "${MAX_JOBS:-$(nproc)}" "$SITE" || true
