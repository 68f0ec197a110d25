# Copyright (c) dualformer-mm contributors.
"""``partition_softmax``: per-token intra-partition attention weights of MHPA (paper section
3.2, eqs. 6-7 read per token, ``intra='token'``).

The fused forward makes three passes over the tokens of each (group, channel block): the
per-partition maximum, the sums of exponentials, and the weights. It also returns both
per-partition statistics in fp32 (fp64 for fp64), with which the backward recomputes every
weight exactly as the forward did.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import compat
from ._backend import on_extension_load, use_extension
from .partition import partition_softmax_pytorch


def partition_softmax(scores: Tensor, codes: Tensor, num_partitions: int) -> Tensor:
    """Per-token softmax of each channel over the tokens of its partition (eqs. 6-7).

    ``w[g, i, c] = exp(scores[g, i, c]) / sum_{j in k(i)} exp(scores[g, j, c])``, so for every
    channel the weights of one partition's tokens sum to one. Runs the fused kernel or
    :func:`partition_softmax_pytorch` according to ``DUALFORMER_OPS``.

    Args:
        scores (Tensor): (G, N, D) logits.
        codes (Tensor): (G, N) int64 partition codes in ``[0, num_partitions)``.
        num_partitions (int): K.

    Returns:
        Tensor: (G, N, D) weights in the dtype of ``scores``.

    Example:
        >>> import torch
        >>> s = torch.tensor([[[0.], [0.], [5.]]])
        >>> partition_softmax(s, torch.tensor([[0, 0, 2]]), 3).flatten().tolist()
        [0.5, 0.5, 1.0]
    """
    if use_extension('partition_softmax', scores.device):
        return torch.ops.dualformer.partition_softmax(scores, codes, num_partitions)[0]
    return partition_softmax_pytorch(scores, codes, num_partitions)


@on_extension_load
def _register() -> None:
    """Fake kernels of the compiled ops (their autograd is in csrc/autograd.cpp)."""

    @compat.register_fake('dualformer::partition_softmax')
    def _(scores: Tensor, codes: Tensor, num_partitions: int) -> Tuple[Tensor, Tensor]:
        acc = torch.float64 if scores.dtype == torch.float64 else torch.float32
        stats = (2, scores.shape[0], num_partitions, scores.shape[2])
        return scores.new_empty(scores.shape), scores.new_empty(stats, dtype=acc)

    @compat.register_fake('dualformer::partition_softmax_backward')
    def _(grad: Tensor, scores: Tensor, codes: Tensor, stats: Tensor) -> Tensor:
        return scores.new_empty(scores.shape)
