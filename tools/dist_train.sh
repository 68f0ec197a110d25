#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG GPUS [train.py options]
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR and PORT on each. Without CUDA the same
# command starts GPUS CPU processes (tools/train.py switches the backend to gloo and logs it).
set -e
CONFIG=$1
GPUS=$2
if [ -z "$CONFIG" ] || [ -z "$GPUS" ]; then
    echo "usage: $0 CONFIG GPUS [tools/train.py options]" >&2
    exit 2
fi
source "$(dirname "$0")/launch_common.sh"
run_torchrun "$GPUS" train.py "$CONFIG" --launcher pytorch "${@:3}"
