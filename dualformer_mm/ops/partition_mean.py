# Copyright (c) dualformer-mm contributors.
"""``partition_mean``: mean partition descriptors of inter-partition attention (paper section
3.2, eq. 8) with the token count of each partition, from one pass over the tokens.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import compat
from ._backend import on_extension_load, use_extension
from .partition import partition_mean_pytorch


def partition_mean(x: Tensor, codes: Tensor, num_partitions: int) -> Tuple[Tensor, Tensor]:
    """Mean of the tokens of each partition (eq. 8); an empty partition gives zeros.

    Runs the fused kernel or :func:`partition_mean_pytorch` according to ``DUALFORMER_OPS``.

    Args:
        x (Tensor): (G, N, D) tokens.
        codes (Tensor): (G, N) int64 partition codes in ``[0, num_partitions)``.
        num_partitions (int): K.

    Returns:
        tuple[Tensor, Tensor]: means (G, K, D) in the dtype of ``x`` and counts (G, K) int64.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[1.], [3.], [5.]]])
        >>> means, counts = partition_mean(x, torch.tensor([[0, 0, 2]]), 3)
        >>> means.flatten().tolist(), counts.tolist()
        ([2.0, 0.0, 5.0], [[2, 0, 1]])
    """
    if use_extension('partition_mean', x.device):
        return torch.ops.dualformer.partition_mean(x, codes, num_partitions)
    return partition_mean_pytorch(x, codes, num_partitions)


@on_extension_load
def _register() -> None:
    """Fake kernels of the compiled ops (their autograd is in csrc/autograd.cpp)."""

    @compat.register_fake('dualformer::partition_mean')
    def _(x: Tensor, codes: Tensor, num_partitions: int) -> Tuple[Tensor, Tensor]:
        return (x.new_empty((x.shape[0], num_partitions, x.shape[2])),
                x.new_empty((x.shape[0], num_partitions), dtype=torch.long))

    @compat.register_fake('dualformer::partition_mean_backward')
    def _(grad: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
        return grad.new_empty((grad.shape[0], codes.shape[1], grad.shape[2]))
