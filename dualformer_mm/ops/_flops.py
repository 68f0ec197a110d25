# Copyright (c) dualformer-mm contributors.
"""FLOP handles of the fused partition ops (paper section 3.2) for ``mmengine.analysis``.

mmengine counts FLOPs by tracing the model and looking each traced op up in a table of
handles; an op without one is reported as unsupported and counted as zero. The handles here
follow mmengine's (fvcore's) convention so that the cost table is the same whichever backend
runs:

* ``dualformer::lsh_hash`` counts its projection, ``numel(x) * P`` multiply-adds, exactly what
  the ``einsum``/``matmul`` handle counts for the reference's projection.
* The pooling and distribution ops count zero: they are exponentials, divisions, scatter
  reductions and gathers, which mmengine counts as zero in the reference path too (it only
  counts matmul-like, convolution, norm and a few pooling ops), just as it counts no FLOP for
  the softmax of ordinary attention.

Two ways in, because mmengine has a public API for one caller and none for the other:

* A caller that builds its own ``FlopAnalyzer`` passes the handles through mmengine's public
  ``FlopAnalyzer(model, inputs).set_op_handle(**FLOP_HANDLES)`` (or
  ``mmengine.analysis.flop_count(model, inputs, supported_ops=FLOP_HANDLES)``), as
  ``dualformer_mm.utils.count_complexity`` (and so ``tools/analysis/get_flops.py``) does.
* ``mmengine.analysis.get_model_complexity_info`` (which mmdet 3.3's
  ``tools/analysis_tools/get_flops.py`` calls) builds its analyzer inside and takes no
  handles, and code we do not control may build a plain ``FlopAnalyzer(model, inputs)``. For
  those callers :func:`register_flop_handles` adds the handles to the table every new
  ``FlopAnalyzer`` starts from, ``mmengine.analysis.complexity_analysis
  ._DEFAULT_SUPPORTED_FLOP_OPS``: a private name of mmengine 0.10, which has no public registry
  of default handles. ``import dualformer_mm`` calls it (``docs/reliability.md`` lists what the
  import changes outside the package); it adds entries for our five op names only and
  replaces none of mmengine's.
"""
from math import prod
from typing import Any, Dict, List

import numpy as np
from mmengine.analysis import complexity_analysis
from mmengine.analysis.jit_handles import get_shape


def lsh_hash_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of the hyperplane projection: one per token, channel and plane.

    Args:
        inputs (list): Traced inputs ``(x, planes)``.
        outputs (list): Traced outputs ``(codes,)``.

    Returns:
        int: ``numel(x) * P`` (per-head planes: mmengine's count of the equivalent einsum,
        which differs from it by rounding only).

    Example:
        >>> import torch
        >>> from mmengine.analysis import FlopAnalyzer
        >>> from dualformer_mm import ops
        >>> class Hash(torch.nn.Module):
        ...     def forward(self, x):
        ...         return ops.lsh_hash(x, torch.ones(4, 3))
        >>> FlopAnalyzer(Hash(), (torch.rand(2, 5, 4), )).total()  # 40 values x 3 planes
        120
    """
    x_shape, planes_shape = get_shape(inputs[0]), get_shape(inputs[1])
    if len(planes_shape) == 2:  # the reference's matmul: (..., D) x (D, P)
        return prod(x_shape) * planes_shape[-1]
    # Per-head planes: the reference's einsum, counted as mmengine's einsum handle counts it
    # (numpy's contraction cost, halved to multiply-adds) so both backends give one total.
    operands = [np.zeros(x_shape), np.zeros(planes_shape)]
    report = np.einsum_path('bhnd,hdp->bhnp', *operands, optimize='optimal')[1]
    for line in report.split('\n'):
        if 'optimized flop' in line.lower():
            return int(np.floor(float(line.split(':')[-1]) / 2))
    raise RuntimeError(f'numpy.einsum_path gave no flop count: {report}')


def reduction_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Partition pooling and distribution: zero, as mmengine counts their reference ops.

    Args:
        inputs (list): Traced inputs (unused).
        outputs (list): Traced outputs (unused).

    Returns:
        int: 0 (see the module docstring for the convention).

    Example:
        >>> reduction_flop_jit([], [])
        0
    """
    return 0


FLOP_HANDLES: Dict[str, Any] = {
    'dualformer::lsh_hash': lsh_hash_flop_jit,
    'dualformer::partition_softmax_pool': reduction_flop_jit,
    'dualformer::partition_softmax': reduction_flop_jit,
    'dualformer::partition_mean': reduction_flop_jit,
    'dualformer::partition_distribute': reduction_flop_jit,
}


def register_flop_handles() -> None:
    """Add :data:`FLOP_HANDLES` to mmengine's default FLOP table (idempotent).

    For analyzers built where no handles can be passed (``get_model_complexity_info``);
    elsewhere prefer ``FlopAnalyzer(...).set_op_handle(**FLOP_HANDLES)``.

    Example:
        >>> from mmengine.analysis import complexity_analysis
        >>> register_flop_handles()
        >>> 'dualformer::lsh_hash' in complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS
        True
    """
    # No public API serves this caller: mmengine 0.10's get_model_complexity_info builds
    # FlopAnalyzer(model, inputs) itself, and FlopAnalyzer's constructor copies this private
    # module-level table into the new analyzer; there is no public registry of default handles.
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.update(FLOP_HANDLES)
