# Sourced by dist_train.sh, dist_test.sh and slurm_train.sh: what their launches share.
TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}"

# $PYTHON if set, else the .venv that `make setup` builds, else the python on PATH.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$TOOLS_DIR/../.venv/bin/python" ]; then
        PYTHON="$TOOLS_DIR/../.venv/bin/python"
    else
        PYTHON=python
    fi
fi

# run_torchrun NPROC SCRIPT [ARGS...]: SCRIPT (in tools/) in NPROC processes on this machine.
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR and PORT on each.
run_torchrun() {
    local nproc=$1 script=$2
    shift 2
    "$PYTHON" -m torch.distributed.run \
        --nnodes="${NNODES:-1}" \
        --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --master_port="${PORT:-29500}" \
        --nproc_per_node="$nproc" \
        "$TOOLS_DIR/$script" "$@"
}
