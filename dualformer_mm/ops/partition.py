# Copyright (c) dualformer-mm contributors.
"""Partition ops of Multi-Head Partition Attention (paper section 3.2, eqs. 4-9).

Pure-PyTorch reference implementations. They are the test oracle for compiled kernels and
the path the model runs when no extension is built. All ops work on a batch of independent
"groups" (batch x heads) so one call serves every head at once.

Shapes used throughout:
    x:      (G, N, D) token features, G = batch * heads, N tokens, D channels per head.
    codes:  (G, N) int64 partition index in [0, K).
    pooled: (G, K, D) one feature per partition.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import compat


def lsh_projection(x: Tensor, planes: Tensor) -> Tensor:
    """Float64 projections of tokens on the LSH hyperplane normals, whose signs are the code
    bits of :func:`lsh_hash_pytorch`.

    Args:
        x (Tensor): Tokens of shape (G, N, D) or (B, H, N, D).
        planes (Tensor): Normals of shape (D, P), or (H, D, P) with ``x`` of (B, H, N, D).

    Returns:
        Tensor: float64 of shape ``x.shape[:-1] + (P, )``.

    Example:
        >>> lsh_projection(torch.tensor([[[1., -2.]]]), torch.eye(2)).tolist()
        [[[1.0, -2.0]]]
    """
    if planes.dim() == 3:
        # (B, H, N, D) x (H, D, P) -> (B, H, N, P)
        return torch.einsum('bhnd,hdp->bhnp', x.double(), planes.double())
    return torch.matmul(x.double(), planes.double())


def lsh_hash_pytorch(x: Tensor, planes: Tensor) -> Tensor:
    """Hash tokens to partition codes with random hyperplanes (eqs. 4-5).

    Bit ``b`` of a token's code is ``1`` when the token lies on the positive side of
    hyperplane ``b``; the code is ``sum_b 2**b * bit_b``, so ``P`` planes give ``2**P``
    partitions.

    Args:
        x (Tensor): Tokens of shape (G, N, D) or (B, H, N, D).
        planes (Tensor): Hyperplane normals of shape (D, P) shared by all groups, or
            (H, D, P) with one set per head when ``x`` is (B, H, N, D).

    The projections are computed in float64 whatever the input dtype. Products of float32
    (or half) values are exact there, so the sign of a projection, and hence the code, does
    not depend on the order in which a backend sums over channels (MKL, OpenBLAS, cuBLAS, the
    fused kernels) unless it lies within about ``D * 2**-53 * sum_d |x_d w_d|`` of zero. In
    float32 two correct orders disagree on about one projection in 10**5, so CPU and GPU
    runs, or the reference and a kernel, would partition some tokens differently.

    Returns:
        Tensor: int64 codes of shape ``x.shape[:-1]``.
    """
    bits = (lsh_projection(x, planes) >= 0).long()
    weights = 2 ** torch.arange(planes.shape[-1], device=x.device, dtype=torch.long)
    return (bits * weights).sum(-1)


def _flat_index(codes: Tensor, num_partitions: int) -> Tensor:
    """Offset each group's codes so that all groups index one (G*K) axis."""
    groups = codes.shape[0]
    offsets = torch.arange(groups, device=codes.device).unsqueeze(1) * num_partitions
    return (codes + offsets).reshape(-1)


def partition_count_pytorch(codes: Tensor, num_partitions: int) -> Tensor:
    """Number of tokens in each partition, shape (G, K), in the dtype int64."""
    groups = codes.shape[0]
    flat = _flat_index(codes, num_partitions)
    counts = torch.zeros(groups * num_partitions, dtype=torch.long, device=codes.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    return counts.view(groups, num_partitions)


def partition_mean_pytorch(x: Tensor, codes: Tensor, num_partitions: int) -> Tuple[Tensor, Tensor]:
    """Mean of the tokens of each partition (eq. 8); an empty partition gives zeros.

    Returns:
        tuple[Tensor, Tensor]: means (G, K, D) and counts (G, K) int64.
    """
    groups, _, dim = x.shape
    flat = _flat_index(codes, num_partitions)
    # Accumulate in fp32 at least: a half-precision sum over thousands of tokens overflows.
    acc_dtype = compat.promote_types(x.dtype, torch.float32)
    sums = x.new_zeros(groups * num_partitions, dim, dtype=acc_dtype)
    sums.index_add_(0, flat, x.reshape(-1, dim).to(acc_dtype))
    counts = partition_count_pytorch(codes, num_partitions)
    means = sums.view(groups, num_partitions, dim) / counts.clamp(min=1).unsqueeze(-1)
    return means.to(x.dtype), counts


def _partition_exp(scores: Tensor, codes: Tensor, num_partitions: int,
                   acc_dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The shared first steps of both softmax ops: max-shifted exponentials per partition.

    Returns:
        tuple: ``flat`` (G*N,) partition rows, ``s`` the scores as (G*N, D) in
        ``acc_dtype``, ``e = exp(s - max over the token's partition)`` (G*N, D) and
        ``denom`` (G*K, D), the per-partition sums of ``e``.
    """
    groups, _, dim = scores.shape
    flat = _flat_index(codes, num_partitions)
    s = scores.reshape(-1, dim).to(acc_dtype)
    idx = flat.unsqueeze(1).expand(-1, dim)
    # Subtract the per-partition max so exp() cannot overflow; the max is not differentiated
    # (softmax is invariant to it), which keeps the gradient exact.
    peak = s.new_full((groups * num_partitions, dim), float('-inf'))
    peak = peak.scatter_reduce(0, idx, s.detach(), reduce='amax', include_self=True)
    e = torch.exp(s - peak.index_select(0, flat))
    denom = s.new_zeros(groups * num_partitions, dim).index_add(0, flat, e)
    return flat, s, e, denom


def partition_softmax_pool_pytorch(scores: Tensor, values: Tensor, codes: Tensor,
                                   num_partitions: int) -> Tensor:
    """Softmax-weighted pooling of ``values`` inside each partition (eqs. 6-7, ``intra='pool'``).

    For each channel ``c`` and partition ``k``:
    ``out[k, c] = sum_{i in k} softmax_{i in k}(scores[:, c])_i * values[i, c]``.
    An empty partition gives zeros. Mixed input dtypes (as autocast hands them) are computed
    in the accumulation dtype and returned in the dtype of ``values``.

    Args:
        scores (Tensor): (G, N, D) attention logits per token and channel.
        values (Tensor): (G, N, D) values to pool.
        codes (Tensor): (G, N) partition codes.
        num_partitions (int): K.

    Returns:
        Tensor: (G, K, D) pooled features.
    """
    groups, _, dim = scores.shape
    # At least fp32: half-precision sums over thousands of tokens would overflow or stall.
    acc_dtype = compat.promote_types(compat.promote_types(scores.dtype, values.dtype),
                                    torch.float32)
    flat, s, e, denom = _partition_exp(scores, codes, num_partitions, acc_dtype)
    v = values.reshape(-1, dim).to(s.dtype)
    numer = s.new_zeros(groups * num_partitions, dim).index_add(0, flat, e * v)
    out = numer / denom.clamp(min=torch.finfo(s.dtype).tiny)
    return out.view(groups, num_partitions, dim).to(values.dtype)


def partition_softmax_pytorch(scores: Tensor, codes: Tensor, num_partitions: int) -> Tensor:
    """Per-token softmax weights inside each partition (eqs. 6-7, ``intra='token'``).

    ``w[i, c] = exp(scores[i, c]) / sum_{j in k(i)} exp(scores[j, c])``: for each channel, the
    weights of the tokens of one partition sum to one. MHPA's token reading multiplies them
    with the transformed features, ``x_i^intra = w_i * x~_i``.

    Args:
        scores (Tensor): (G, N, D) logits per token and channel.
        codes (Tensor): (G, N) partition codes.
        num_partitions (int): K.

    Returns:
        Tensor: (G, N, D) weights in the dtype of ``scores``.
    """
    acc_dtype = compat.promote_types(scores.dtype, torch.float32)
    flat, _, e, denom = _partition_exp(scores, codes, num_partitions, acc_dtype)
    # Every token's own partition holds it, so its denominator is at least exp(0) = 1.
    return (e / denom.index_select(0, flat)).view(scores.shape).to(scores.dtype)


def partition_distribute_pytorch(pooled: Tensor, codes: Tensor) -> Tensor:
    """Give every token the feature of its partition: (G, K, D) -> (G, N, D)."""
    groups, num_partitions, dim = pooled.shape
    flat = _flat_index(codes, num_partitions)
    return pooled.reshape(-1, dim).index_select(0, flat).view(*codes.shape, dim)


def kmeans_assign_pytorch(x: Tensor, num_partitions: int, iters: int = 3) -> Tensor:
    """K-Means partition codes (the alternative generator of Table 6).

    Centroids start at evenly spaced tokens (deterministic) and are refined by ``iters``
    Lloyd steps. The assignment is not differentiated, like the LSH codes.

    Args:
        x (Tensor): (G, N, D) tokens.
        num_partitions (int): K; at most N is used when there are fewer tokens.
        iters (int): Lloyd iterations.

    Returns:
        Tensor: (G, N) int64 codes.
    """
    with torch.no_grad():
        xf = x.float()
        groups, n, _ = xf.shape
        start = torch.linspace(0, n - 1, num_partitions, device=x.device).round().long()
        centroids = xf[:, start]  # (G, K, D)
        for _ in range(iters):
            codes = torch.cdist(xf, centroids).argmin(-1)
            means, counts = partition_mean_pytorch(xf, codes, num_partitions)
            # An emptied cluster keeps its old centroid instead of collapsing to the origin.
            centroids = torch.where(counts.unsqueeze(-1) > 0, means, centroids)
        return torch.cdist(xf, centroids).argmin(-1)
