#!/usr/bin/env bash
# Distributed testing with torchrun: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR and PORT on each. Without CUDA the same
# command starts GPUS CPU processes with the gloo backend.
set -e
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
if [ -z "$CONFIG" ] || [ -z "$CHECKPOINT" ] || [ -z "$GPUS" ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py options]" >&2
    exit 2
fi
source "$(dirname "$0")/launch_common.sh"
run_torchrun "$GPUS" test.py "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
