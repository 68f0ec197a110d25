# Copyright (c) dualformer-mm contributors.
"""``partition_softmax_pool``: intra-partition attention of MHPA (paper section 3.2, eqs. 6-7).

The fused forward makes two passes over the tokens (per-partition max, then exp-sums) in one
op and also returns per-partition statistics in fp32 (fp64 for fp64): the log-sum-exp, with
which the backward recomputes each token's softmax weight in a single map over the tokens, and
the pooled feature before rounding to fp16/bf16.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import compat
from ._backend import on_extension_load, use_extension
from .partition import partition_softmax_pool_pytorch


def partition_softmax_pool(scores: Tensor, values: Tensor, codes: Tensor,
                           num_partitions: int) -> Tensor:
    """Softmax-weighted pooling of ``values`` inside each partition (eqs. 6-7).

    ``out[g, k, c] = sum_{i in k} softmax_{i in k}(scores[g, :, c])_i * values[g, i, c]``;
    an empty partition gives zeros. Runs the fused kernel or
    :func:`partition_softmax_pool_pytorch` according to ``DUALFORMER_OPS``.

    Args:
        scores (Tensor): (G, N, D) logits; a dtype other than that of ``values`` (as autocast
            gives) is computed in the wider of the two.
        values (Tensor): (G, N, D) features to pool.
        codes (Tensor): (G, N) int64 partition codes in ``[0, num_partitions)``.
        num_partitions (int): K.

    Returns:
        Tensor: (G, K, D) pooled features in the dtype of ``values``.

    Example:
        >>> import torch
        >>> v = torch.tensor([[[1.], [3.], [5.]]])
        >>> partition_softmax_pool(torch.zeros_like(v), v, torch.tensor([[0, 0, 2]]), 3)
        tensor([[[2.],
                 [0.],
                 [5.]]])
    """
    if not use_extension('partition_softmax_pool', values.device):
        return partition_softmax_pool_pytorch(scores, values, codes, num_partitions)
    out_dtype = values.dtype
    if scores.dtype != values.dtype:
        # Autocast hands MHPA fp32 scores (norm outputs) and half values (a linear's output):
        # the kernel computes in the wider dtype, as the reference does, and the result has
        # the values' dtype, as the reference's has.
        wide = torch.promote_types(scores.dtype, values.dtype)
        scores, values = scores.to(wide), values.to(wide)
    pooled = torch.ops.dualformer.partition_softmax_pool(scores, values, codes, num_partitions)[0]
    return pooled.to(out_dtype)


@on_extension_load
def _register() -> None:
    """Fake kernels of the compiled ops (their autograd is in csrc/autograd.cpp)."""

    @compat.register_fake('dualformer::partition_softmax_pool')
    def _(scores: Tensor, values: Tensor, codes: Tensor,
          num_partitions: int) -> Tuple[Tensor, Tensor]:
        shape = (values.shape[0], num_partitions, values.shape[2])
        acc = torch.float64 if values.dtype == torch.float64 else torch.float32
        return values.new_empty(shape), values.new_empty((2, ) + shape, dtype=acc)

    @compat.register_fake('dualformer::partition_softmax_pool_backward')
    def _(grad: Tensor, scores: Tensor, values: Tensor, codes: Tensor,
          stats: Tensor) -> Tuple[Tensor, Tensor]:
        # The kernel works on contiguous copies, so its gradients are contiguous whatever the
        # strides of the inputs: new_empty, not empty_like, says so to the tracer.
        return scores.new_empty(scores.shape), values.new_empty(values.shape)
