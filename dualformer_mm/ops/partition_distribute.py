# Copyright (c) dualformer-mm contributors.
"""``partition_distribute``: global-to-local aggregation of MHPA (paper section 3.2): every
token receives its partition's feature; the backward sums the token gradients per partition.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import compat
from ._backend import on_extension_load, use_extension
from .partition import partition_distribute_pytorch


def partition_distribute(pooled: Tensor, codes: Tensor) -> Tensor:
    """Give every token the feature of its partition: (G, K, D) -> (G, N, D).

    Runs the fused kernel or :func:`partition_distribute_pytorch` according to
    ``DUALFORMER_OPS``.

    Args:
        pooled (Tensor): (G, K, D) partition features.
        codes (Tensor): (G, N) int64 partition codes in ``[0, K)``.

    Returns:
        Tensor: (G, N, D) token features.

    Example:
        >>> import torch
        >>> pooled = torch.tensor([[[10.], [20.]]])
        >>> partition_distribute(pooled, torch.tensor([[1, 0, 1]])).flatten().tolist()
        [20.0, 10.0, 20.0]
    """
    if use_extension('partition_distribute', pooled.device):
        return torch.ops.dualformer.partition_distribute(pooled, codes)
    return partition_distribute_pytorch(pooled, codes)


@on_extension_load
def _register() -> None:
    """Fake kernels of the compiled ops (their autograd is in csrc/autograd.cpp)."""

    @compat.register_fake('dualformer::partition_distribute')
    def _(pooled: Tensor, codes: Tensor) -> Tensor:
        return pooled.new_empty((pooled.shape[0], codes.shape[1], pooled.shape[2]))

    @compat.register_fake('dualformer::partition_distribute_backward')
    def _(grad: Tensor, codes: Tensor, num_partitions: int) -> Tensor:
        return grad.new_empty((grad.shape[0], num_partitions, grad.shape[2]))
