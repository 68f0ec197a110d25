# Copyright (c) dualformer-mm contributors.
"""``tools/benchmarks/bench_ops.py`` at the dry run's small shapes: its own ``main()``,
options and JSON output, on tensors small enough for a CPU in CI.

Run by the ``bench_ops`` step as ``python -m gpu_check.bench_ops_dry [bench_ops options]``;
the script is loaded by its path.
"""
from typing import Dict, Tuple

from .common import load_tool_script

# (batch, height, width) of bench_ops' stage-1 cases, named for what they are.
DRY_SHAPES: Dict[str, Tuple[int, int, int]] = {'64x64 b2': (2, 64, 64), '64x96 b1': (1, 64, 96)}


def main() -> None:
    """bench_ops' main() with :data:`DRY_SHAPES` for its op and bandwidth rows."""
    bench_ops = load_tool_script('benchmarks/bench_ops.py')
    bench_ops.SHAPES = dict(DRY_SHAPES)
    bench_ops.BANDWIDTH_SHAPES = dict(DRY_SHAPES)
    bench_ops.main()


if __name__ == '__main__':
    main()
