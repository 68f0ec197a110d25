"""Fused partition ops of MHPA (paper section 3.2) against the PyTorch reference.

Every test runs the compiled kernels of ``dualformer_mm._ext``: the install always builds
them, so a missing extension fails these tests (with the import error) instead of skipping.
"""
import pytest
import torch

from dualformer_mm import DualFormer, ops
from tests.utils import DEVICES, TINY_ARCH

CUDA_OK = torch.cuda.is_available()
# (dtype, rtol, atol) of ext against reference. Both accumulate half precision in fp32, so
# they differ by at most the final rounding (summation order aside).
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-6, id='fp32'),
    pytest.param(torch.float16, 2e-3, 2e-3, id='fp16'),
    pytest.param(torch.bfloat16, 1.6e-2, 1.6e-2, id='bf16'),
]


@pytest.fixture(autouse=True)
def ext_backend():
    """Run each test with the extension, failing loudly when it is not built."""
    if ops.load_extension() is None:
        pytest.fail('dualformer_mm._ext is not importable; the install must build it: '
                    f'{ops._backend._state.error}')
    with ops.use_backend('ext'):
        yield


def assert_close_to_reference(got, want, device, rtol, atol, **kwargs):
    """``assert_close`` of an ext result with the reference's.

    On CUDA the kernels' atomics add in another order than the reference's ``index_add``:
    where a sum cancels (the score gradients, ``w (g - sum_j w_j g_j)``), fp32 results then
    differ by about 1e-5 of the tensor's largest element (tests/test_cuda_emulation.py
    measures it on the emulated grids), so there ``atol`` is at least ``rtol`` times that
    element. The CPU kernels sum in the reference's order and keep ``atol``.
    """
    if device == 'cuda' and want.is_floating_point():
        finite = want[torch.isfinite(want)]
        if finite.numel():
            atol = max(atol, rtol * finite.abs().max().item())
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, **kwargs)


def reference(fn, *args):
    """Run ``fn`` (an op name) with the reference backend."""
    with ops.use_backend('reference'):
        return getattr(ops, fn)(*args)


def make_inputs(g, n, d, k, device, dtype, empty=True):
    scores = (torch.randn(g, n, d) * 3).to(device, dtype)
    values = torch.randn(g, n, d).to(device, dtype)
    codes = torch.randint(0, k, (g, n))
    if empty:
        codes[0] = k - 1  # group 0: every token in the last partition, K-1 empty partitions
    return scores, values, codes.to(device)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype,rtol,atol', DTYPES)
def test_lsh_hash_equals_reference(device, dtype, rtol, atol):
    # (B, H, N, D) as MHPA gives it: a transposed, non-contiguous view, per-head planes.
    x = torch.randn(3, 257, 2, 16).to(device, dtype).transpose(1, 2)
    planes = torch.randn(2, 16, 3, device=device)
    codes = ops.lsh_hash(x, planes)
    assert codes.dtype == torch.long and codes.shape == (3, 2, 257)
    assert torch.equal(codes, reference('lsh_hash', x, planes))
    # (G, N, D) with one set of planes; 5 planes give codes up to 31.
    flat = torch.randn(4, 1000, 8).to(device, dtype)
    shared = torch.randn(8, 5, device=device)
    codes = ops.lsh_hash(flat, shared)
    assert torch.equal(codes, reference('lsh_hash', flat, shared))
    assert codes.min() >= 0 and codes.max() < 32 and len(codes.unique()) > 16


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('bits', [1, 2, 3, 4, 5, 9, 62])
@pytest.mark.parametrize('tokens', [1, 11, 12, 13, 100])
def test_lsh_hash_plane_counts_and_tiles(device, bits, tokens):
    # The CPU kernel projects tiles of 12 tokens onto 4 planes at a time: every remainder.
    for dim in (1, 7, 32):
        x = torch.randn(2, 3, tokens, dim, device=device)
        planes = torch.randn(3, dim, bits, device=device)
        codes = ops.lsh_hash(x, planes)
        assert torch.equal(codes, reference('lsh_hash', x, planes)), (bits, tokens, dim)
        assert codes.min() >= 0 and codes.max() < 2 ** bits


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_lsh_hash_signs_on_and_near_planes(device, dtype):
    planes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], device=device)  # (D=3, P=2)
    x = torch.tensor([[[0.0, 0.0, 0.0],            # on both planes: proj 0 counts as positive
                       [-0.0, -0.0, -0.0],         # -0.0 too, as in `proj >= 0`
                       [1e8, -1.0, -1e8],          # exact proj (-1, 1e8 + 1 - 1e8)
                       [float('nan'), 1.0, 1.0],   # NaN is not >= 0
                       [1.0, 2.0, -3.0]]],         # exactly on plane 0, not on plane 1
                     device=device, dtype=dtype)
    # Token 2 in float32 arithmetic: 1e8 + (-1) rounds to 1e8 and the projection onto plane 0
    # would come out 0 (bit set); in float64 it is exactly -1 (bit clear).
    want = [[3, 3, 2, 0, 1]]
    assert ops.lsh_hash(x, planes).tolist() == want
    assert reference('lsh_hash', x, planes).tolist() == want


# 2 x 5000 tokens: several chunks per group, summed in a fixed order whatever the threads;
# 6 x 300: one chunk per group, each group summed and finished by one task.
@pytest.mark.parametrize('groups,tokens', [(2, 5000), (6, 300)])
def test_sums_do_not_depend_on_thread_count(groups, tokens):
    scores, values, codes = make_inputs(groups, tokens, 48, 8, 'cpu', torch.float32)
    grad = torch.randn(groups, tokens, 48)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            weights, stats = torch.ops.dualformer.partition_softmax(scores, codes, 8)
            results.append((
                ops.partition_mean(values, codes, 8),
                torch.ops.dualformer.partition_distribute_backward(grad, codes, 8),
                ops.partition_softmax_pool(scores, values, codes, 8), weights, stats,
                torch.ops.dualformer.partition_softmax_backward(grad, scores, codes, stats)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(other[0][0], results[0][0][0])
        assert torch.equal(other[0][1], results[0][0][1])
        for i in range(1, 6):
            assert torch.equal(other[i], results[0][i]), i


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype,rtol,atol', DTYPES)
def test_pools_forward_backward_match_reference(device, dtype, rtol, atol):
    g, n, d, k = 5, 203, 40, 8
    scores, values, codes = make_inputs(g, n, d, k, device, dtype)
    grads = {}
    for backend in ('ext', 'reference'):
        s = scores.clone().requires_grad_()
        v = values.clone().requires_grad_()
        with ops.use_backend(backend):
            soft = ops.partition_softmax_pool(s, v, codes, k)
            mean, counts = ops.partition_mean(v, codes, k)
            spread = ops.partition_distribute(torch.cat([soft, mean], -1), codes)
            weights = ops.partition_softmax(s, codes, k)
        # A weighted loss, so that every output element gets its own gradient.
        gen = torch.Generator().manual_seed(1)
        weight = torch.randn(spread.shape, generator=gen).to(device)
        weight_tokens = torch.randn(weights.shape, generator=gen).to(device)
        ((spread.float() * weight).sum() + (weights.float() * weight_tokens).sum()).backward()
        grads[backend] = (soft.detach(), mean.detach(), counts, spread.detach(),
                          weights.detach(), s.grad, v.grad)
    for name, got, want in zip(('soft', 'mean', 'counts', 'spread', 'weights', 'grad_s',
                                'grad_v'), grads['ext'], grads['reference']):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert_close_to_reference(got, want, device, rtol, atol, msg=name)
    soft, mean = grads['ext'][:2]
    # Empty partitions give exact zeros, never NaN.
    assert torch.isfinite(soft.float()).all() and torch.isfinite(mean.float()).all()
    assert (soft[0, :-1] == 0).all() and (mean[0, :-1] == 0).all()
    # Per-token weights sum to one over each non-empty partition and channel.
    sums = torch.zeros(g, k, d, dtype=torch.float64, device=device)
    sums.scatter_add_(1, codes.unsqueeze(-1).expand(-1, -1, d), grads['ext'][4].double())
    present = torch.zeros(g, k, dtype=torch.bool, device=device)
    present.scatter_(1, codes, True)
    torch.testing.assert_close(sums[present], torch.ones_like(sums[present]), rtol=0,
                               atol=max(atol, 1e-5) * 8)
    assert torch.isfinite(grads['ext'][5].float()).all()


@pytest.mark.parametrize('device', DEVICES)
def test_gradcheck_float64(device):
    g, n, d, k = 2, 11, 3, 4
    scores, values, codes = make_inputs(g, n, d, k, device, torch.float64)
    scores.requires_grad_()
    values.requires_grad_()
    pooled = torch.randn(g, k, d, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, v: ops.partition_softmax_pool(s, v, codes, k), (scores, values))
    assert torch.autograd.gradcheck(lambda v: ops.partition_mean(v, codes, k)[0], (values,))
    assert torch.autograd.gradcheck(lambda p: ops.partition_distribute(p, codes), (pooled,))
    assert torch.autograd.gradcheck(lambda s: ops.partition_softmax(s, codes, k), (scores,))


@pytest.mark.parametrize('device', DEVICES)
def test_single_token(device):
    values = torch.tensor([[[2.0, -1.0, 0.5]]], device=device, requires_grad=True)
    codes = torch.tensor([[2]], device=device)
    soft = ops.partition_softmax_pool(values * 3, values, codes, 4)
    mean, counts = ops.partition_mean(values, codes, 4)
    assert torch.equal(soft[0, 2], values[0, 0]) and (soft[0, [0, 1, 3]] == 0).all()
    assert torch.equal(mean[0, 2], values[0, 0]) and counts.tolist() == [[0, 0, 1, 0]]
    assert torch.equal(ops.partition_distribute(soft, codes), values.detach())
    soft.sum().backward()
    # One token is its own softmax: out = v, so d out/d v = 1 and d out/d s = 0.
    assert torch.allclose(values.grad, torch.full_like(values, 1.0))
    scores = (values.detach() * 3).requires_grad_()
    weights = ops.partition_softmax(scores, codes, 4)
    assert torch.equal(weights, torch.ones_like(weights))
    weights.sum().backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


@pytest.mark.parametrize('device', DEVICES)
def test_non_contiguous_inputs(device):
    base = torch.randn(3, 6, 50, device=device)
    values = base.transpose(1, 2)[:, :, ::2]  # (G=3, N=50, D=3), strided twice
    scores = torch.randn(3, 50, 6, device=device)[:, :, 1::2]
    codes = torch.randint(0, 5, (3, 100), device=device)[:, ::2]
    pooled = torch.randn(3, 10, 5, device=device).transpose(1, 2)  # (G, K=5, D=10)
    assert not (values.is_contiguous() or scores.is_contiguous() or codes.is_contiguous())
    for op, args in (('partition_softmax_pool', (scores, values, codes, 5)),
                     ('partition_softmax', (scores, codes, 5)),
                     ('partition_mean', (values, codes, 5)),
                     ('partition_distribute', (pooled, codes))):
        got, want = getattr(ops, op)(*args), reference(op, *args)
        assert_close_to_reference(got, want, device, 1e-5, 1e-6, msg=op)


@pytest.mark.parametrize('device', DEVICES)
def test_large_n(device):
    # 200k tokens: beyond fp16's range when summed, and many tasks per thread.
    g, n, d, k = 2, 200_000, 4, 8
    scores, values, codes = make_inputs(g, n, d, k, device, torch.float32, empty=False)
    values = values + 1000.0
    for op, args in (('partition_softmax_pool', (scores, values, codes, k)),
                     ('partition_softmax', (scores, codes, k)),
                     ('partition_mean', (values, codes, k))):
        assert_close_to_reference(getattr(ops, op)(*args), reference(op, *args), device,
                                  1e-5, 1e-3, msg=op)
    half = values.half()
    mean, _ = ops.partition_mean(half, codes, k)
    assert torch.isfinite(mean).all()
    torch.testing.assert_close(mean, reference('partition_mean', half, codes, k)[0])


@pytest.mark.parametrize('device', DEVICES)
def test_softmax_pool_propagates_nan_and_inf(device):
    # A NaN or inf score makes its partition's channel NaN in the reference (NaN - NaN, or
    # inf - inf, in the max subtraction); the kernels must not turn it into a silent zero.
    scores, values, codes = make_inputs(2, 30, 5, 4, device, torch.float32)
    scores[1, 3, 2] = float('nan')
    scores[1, 7, 4] = float('inf')
    results = {}
    for backend in ('ext', 'reference'):
        s, v = scores.clone().requires_grad_(), values.clone().requires_grad_()
        with ops.use_backend(backend):
            out = ops.partition_softmax_pool(s, v, codes, 4)
        out.backward(torch.ones_like(out))
        results[backend] = (out.detach(), s.grad, v.grad)
    out = results['ext'][0]
    assert out[1, codes[1, 3], 2].isnan() and out[1, codes[1, 7], 4].isnan()
    assert out.isnan().sum() == 2 and (out[0, :-1] == 0).all()  # empty partitions stay 0
    for got, want in zip(results['ext'], results['reference']):
        assert_close_to_reference(got, want, device, 1e-5, 1e-6, equal_nan=True)
    # Per-token weights: NaN for every token of the affected partition and channel only.
    weights = {}
    for backend in ('ext', 'reference'):
        s = scores.clone().requires_grad_()
        with ops.use_backend(backend):
            w = ops.partition_softmax(s, codes, 4)
        w.backward(torch.ones_like(w))
        weights[backend] = (w.detach(), s.grad)
    w = weights['ext'][0]
    assert w[1, codes[1] == codes[1, 3], 2].isnan().all()
    assert w.isnan().sum() == (codes[1] == codes[1, 3]).sum() + (codes[1] == codes[1, 7]).sum()
    for got, want in zip(weights['ext'], weights['reference']):
        assert_close_to_reference(got, want, device, 1e-5, 1e-6, equal_nan=True)


@pytest.mark.parametrize('device', DEVICES)
def test_zero_channels(device):
    # D = 0: nothing to pool, but the counts still come from the codes.
    values = torch.zeros(2, 6, 0, device=device)
    codes = torch.tensor([[0, 2, 2, 1, 2, 0], [3, 3, 3, 3, 3, 3]], device=device)
    means, counts = ops.partition_mean(values, codes, 4)
    assert means.shape == (2, 4, 0) and counts.tolist() == [[2, 1, 3, 0], [0, 0, 0, 6]]
    assert ops.partition_softmax_pool(values, values, codes, 4).shape == (2, 4, 0)
    assert ops.partition_softmax(values, codes, 4).shape == (2, 6, 0)
    tokens = torch.zeros(2, 0, 3, device=device)  # N = 0: no token to weight or pool
    assert ops.partition_softmax(tokens, codes[:, :0], 4).shape == (2, 0, 3)
    assert ops.partition_distribute(means, codes).shape == (2, 6, 0)


def test_backward_ops_check_their_inputs():
    # The backward ops are public (torch.ops.dualformer.*): a direct call with tensors that do
    # not fit together must raise, not read out of bounds.
    lib = torch.ops.dualformer
    grad, codes = torch.randn(2, 4, 3), torch.zeros(2, 5, dtype=torch.long)
    values, stats = torch.randn(2, 5, 3), torch.randn(2, 2, 4, 3)
    lib.partition_softmax_pool_backward(grad, values, values, codes, stats)  # consistent: fine
    with pytest.raises(RuntimeError, match='G and D of grad'):
        lib.partition_softmax_pool_backward(grad, values[:, :, :2], values[:, :, :2], codes,
                                            stats)
    with pytest.raises(RuntimeError, match='codes must be'):
        lib.partition_softmax_pool_backward(grad, values, values, codes[:1], stats)
    counts = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(RuntimeError, match='codes must be int64'):
        lib.partition_mean_backward(grad, codes[:1], counts)
    with pytest.raises(RuntimeError, match='counts must be int64'):
        lib.partition_mean_backward(grad, codes, counts.float())
    with pytest.raises(RuntimeError, match='num_partitions must be >= 1'):
        lib.partition_distribute_backward(values, codes, 0)
    softmax_stats = torch.randn(2, 2, 4, 3)
    lib.partition_softmax_backward(values, values, codes, softmax_stats)  # consistent: fine
    with pytest.raises(RuntimeError, match='stats must be'):
        lib.partition_softmax_backward(values, values, codes, softmax_stats[:, :1])
    with pytest.raises(RuntimeError, match='grad must have the shape'):
        lib.partition_softmax_backward(values[:, :4], values, codes, softmax_stats)
    with pytest.raises(RuntimeError, match='accumulation dtype'):
        lib.partition_softmax_backward(values, values, codes, softmax_stats.double())


def test_codes_out_of_range_raise():
    values = torch.randn(1, 5, 2)
    bad = torch.tensor([[0, 1, 4, 1, 0]])
    with pytest.raises(RuntimeError, match=r'codes must lie in \[0, 4\)'):
        ops.partition_mean(values, bad, 4)
    with pytest.raises(RuntimeError, match=r'codes must lie in \[0, 4\)'):
        ops.partition_softmax_pool(values, values, bad, 4)
    with pytest.raises(RuntimeError, match=r'codes must lie in \[0, 4\)'):
        ops.partition_softmax(values, bad, 4)
    # The public function promotes mixed dtypes (see test_autocast.py); the raw op refuses.
    with pytest.raises(RuntimeError, match='must share a dtype'):
        torch.ops.dualformer.partition_softmax_pool(values.double(), values, bad.clamp(max=3), 4)


@pytest.mark.parametrize('intra', ['pool', 'token'])
def test_backbone_ext_equals_reference(intra):
    # Every size runs the same ops on the same code paths: one block per stage, head widths
    # 8, 8, 16 and 24 (tests.utils.TINY_ARCH). Eval mode: with batch statistics of a 2x3
    # stage-4 map, train-mode BatchNorm amplifies fp32 summation-order noise by 1e4 in the
    # deep sizes, which says nothing about the ops.
    model = DualFormer(arch=TINY_ARCH, drop_path_rate=0., attn_cfg=dict(intra=intra)).eval()
    x = torch.rand(2, 3, 64, 96)
    outs = {}
    for backend in ('ext', 'reference'):
        model.zero_grad()
        with ops.use_backend(backend):
            out = model(x)
        sum(o.pow(2).mean() for o in out).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        outs[backend] = ([o.detach() for o in out], grads)
    for got, want in zip(outs['ext'][0], outs['reference'][0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    got, want = outs['ext'][1], outs['reference'][1]
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * want.abs().max().item())
