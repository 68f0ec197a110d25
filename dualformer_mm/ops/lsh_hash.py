# Copyright (c) dualformer-mm contributors.
"""``lsh_hash``: the LSH partition generator of MHPA (paper section 3.2, eqs. 4-5).

Both paths project in float64 (see :func:`lsh_hash_pytorch`), so their codes are identical
for any input whose projections are not within about 1e-15 (relative) of a hyperplane. On CPU
the fused kernel projects and packs the sign bits in one pass; on CUDA it packs the bits of
the reference's float64 einsum. Codes are not differentiable: the partition is a discrete
assignment, as in the paper.
"""
import torch
from torch import Tensor

from .. import compat
from ._backend import on_extension_load, use_extension
from .partition import lsh_hash_pytorch


def lsh_hash(x: Tensor, planes: Tensor) -> Tensor:
    """Hash tokens to partition codes with random hyperplanes (eqs. 4-5).

    Runs the fused kernel or :func:`lsh_hash_pytorch` according to ``DUALFORMER_OPS``.

    Args:
        x (Tensor): Tokens (G, N, D), or (B, H, N, D) with per-head planes.
        planes (Tensor): Hyperplane normals (D, P), or (H, D, P) one set per head.

    Returns:
        Tensor: int64 codes in ``[0, 2**P)`` of shape ``x.shape[:-1]``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[1., -1.], [-1., 1.]]])  # (G=1, N=2, D=2)
        >>> lsh_hash(x, torch.eye(2)).tolist()  # bit b set when x_b >= 0
        [[1, 2]]
    """
    # The CUDA hash is a float64 einsum and a bit-packing map: no atomics, deterministic.
    if use_extension('lsh_hash', x.device, cuda_deterministic=True):
        return torch.ops.dualformer.lsh_hash(x, planes)
    return lsh_hash_pytorch(x, planes)


@on_extension_load
def _register() -> None:
    """Fake kernel of the compiled op, for torch.compile and torch.export tracing."""

    @compat.register_fake('dualformer::lsh_hash')
    def _(x: Tensor, planes: Tensor) -> Tensor:
        return x.new_empty(x.shape[:-1], dtype=torch.long)
