"""Partition ops (paper section 3.2) against naive per-partition loops.

Every test runs twice: with ``DUALFORMER_OPS=reference``, which checks the PyTorch reference
itself (the oracle of the fused kernels), and with ``ext``, the fused kernels.
"""
import pytest
import torch

from dualformer_mm import ops
from tests.utils import DEVICES

DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True, params=['reference', 'ext'])
def backend(request):
    """Pin the backend of the dispatching functions for each test."""
    with ops.use_backend(request.param):
        yield request.param


def naive_codes(x, planes):
    """Eqs. 4-5 written out: H(x) = sum_b 2^b * [beta_b . x >= 0]."""
    codes = torch.zeros(x.shape[:-1], dtype=torch.long)
    for b in range(planes.shape[-1]):
        codes += (2 ** b) * ((x.double() @ planes[:, b].double()) >= 0).long()
    return codes


def naive_pools(scores, values, codes, k):
    """Mean pooling, softmax pooling and per-token softmax weights by explicit loops over
    groups and partitions."""
    g, _, d = values.shape
    mean = torch.zeros(g, k, d, dtype=torch.float64)
    soft = torch.zeros(g, k, d, dtype=torch.float64)
    weights = torch.zeros(values.shape, dtype=torch.float64)
    for gi in range(g):
        for p in range(k):
            mask = codes[gi] == p
            if mask.any():
                v = values[gi][mask].double()
                mean[gi, p] = v.mean(0)
                w = torch.softmax(scores[gi][mask].double(), dim=0)
                soft[gi, p] = (w * v).sum(0)
                weights[gi][mask] = w
    return mean, soft, weights


@pytest.mark.parametrize('device', DEVICES)
def test_lsh_hash_matches_equations(device):
    x = torch.randn(3, 50, 16)
    planes = torch.randn(16, 3)
    codes = ops.lsh_hash(x.to(device), planes.to(device)).cpu()
    assert codes.dtype == torch.long
    assert torch.equal(codes, naive_codes(x, planes))
    assert codes.min() >= 0 and codes.max() < 8


def test_lsh_hash_per_head_planes():
    x = torch.randn(2, 3, 20, 8)  # (B, heads, n, d)
    planes = torch.randn(3, 8, 2)
    codes = ops.lsh_hash(x, planes)
    for h in range(3):
        assert torch.equal(codes[:, h], naive_codes(x[:, h], planes[h]))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', DTYPES)
def test_pools_match_naive_loops(device, dtype):
    g, n, d, k = 4, 37, 6, 8
    scores, values = torch.randn(g, n, d) * 3, torch.randn(g, n, d)
    codes = torch.randint(0, k, (g, n))
    codes[0] = 2  # one group with every token in a single partition: 7 empty partitions
    mean, counts = ops.partition_mean(values.to(device, dtype), codes.to(device), k)
    soft = ops.partition_softmax_pool(scores.to(device, dtype), values.to(device, dtype),
                                      codes.to(device), k)
    weights = ops.partition_softmax(scores.to(device, dtype), codes.to(device), k)
    ref_mean, ref_soft, ref_weights = naive_pools(scores, values, codes, k)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean.cpu().double(), ref_mean, **tol)
    torch.testing.assert_close(soft.cpu().double(), ref_soft, **tol)
    torch.testing.assert_close(weights.cpu().double(), ref_weights, **tol)
    assert mean.dtype == soft.dtype == weights.dtype == dtype
    assert torch.equal(counts.cpu(), torch.stack([torch.bincount(c, minlength=k) for c in codes]))
    # Empty partitions give zeros, never NaN.
    assert torch.isfinite(soft).all() and torch.isfinite(mean).all()
    assert (soft[0, torch.arange(k) != 2] == 0).all()


def test_distribute_gathers_partition_features():
    pooled = torch.randn(2, 4, 3)
    codes = torch.tensor([[0, 3, 3, 1], [2, 2, 0, 0]])
    out = ops.partition_distribute(pooled, codes)
    for g in range(2):
        for i in range(4):
            assert torch.equal(out[g, i], pooled[g, codes[g, i]])


def test_non_contiguous_inputs():
    values = torch.randn(5, 3, 40).transpose(1, 2)  # (G, N=40, D=3), not contiguous
    scores = torch.randn(5, 40, 6)[:, :, ::2]  # every other channel: strided
    codes = torch.randint(0, 4, (5, 80))[:, ::2]
    assert not (values.is_contiguous() or scores.is_contiguous() or codes.is_contiguous())
    mean, _ = ops.partition_mean(values, codes, 4)
    soft = ops.partition_softmax_pool(scores, values, codes, 4)
    weights = ops.partition_softmax(scores, codes, 4)
    ref_mean, ref_soft, ref_weights = naive_pools(scores.contiguous(), values.contiguous(),
                                                  codes.contiguous(), 4)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(soft.double(), ref_soft, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.double(), ref_weights, rtol=1e-5, atol=1e-6)


def test_single_token_and_half_precision_accumulation():
    values = torch.full((1, 1, 4), 2.0)
    soft = ops.partition_softmax_pool(values, values, torch.zeros(1, 1, dtype=torch.long), 4)
    assert torch.equal(soft[0, 0], values[0, 0]) and (soft[0, 1:] == 0).all()
    # 70k fp16 tokens of 1000 sum past fp16's range; the pooling accumulates in fp32.
    big = torch.full((1, 70000, 2), 1000.0, dtype=torch.float16)
    mean, counts = ops.partition_mean(big, torch.zeros(1, 70000, dtype=torch.long), 2)
    assert mean.dtype == torch.float16 and torch.equal(mean[0, 0], big[0, 0])
    # Five equal scores of 6e4, whose exp overflows without the maximum subtracted: weights
    # of 1/5 that pool the values back to 6e4 exactly, and nothing in the empty partition.
    huge = torch.full((1, 5, 2), 6e4, dtype=torch.float16)
    soft = ops.partition_softmax_pool(huge, huge, torch.zeros(1, 5, dtype=torch.long), 2)
    assert torch.equal(soft[0, 0], huge[0, 0]) and (soft[0, 1] == 0).all()


def test_gradcheck_float64():
    g, n, d, k = 2, 9, 3, 4
    scores = torch.randn(g, n, d, dtype=torch.float64, requires_grad=True)
    values = torch.randn(g, n, d, dtype=torch.float64, requires_grad=True)
    codes = torch.randint(0, k, (g, n))
    pooled = torch.randn(g, k, d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, v: ops.partition_softmax_pool(s, v, codes, k), (scores, values))
    assert torch.autograd.gradcheck(lambda v: ops.partition_mean(v, codes, k)[0], (values,))
    assert torch.autograd.gradcheck(lambda p: ops.partition_distribute(p, codes), (pooled,))
    assert torch.autograd.gradcheck(lambda s: ops.partition_softmax(s, codes, k), (scores,))


def test_kmeans_separates_clusters():
    centers = torch.tensor([[10., 0.], [-10., 0.], [0., 10.], [0., -10.]])
    x = (centers.repeat_interleave(25, 0) + 0.1 * torch.randn(100, 2)).unsqueeze(0)
    codes = ops.kmeans_assign(x, 4, iters=5)[0]
    # Tokens of one true cluster share a code and the four clusters get four codes.
    groups = codes.view(4, 25)
    assert (groups == groups[:, :1]).all()
    assert len(set(groups[:, 0].tolist())) == 4
