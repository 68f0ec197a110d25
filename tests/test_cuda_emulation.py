"""The CUDA kernels of ``dualformer_mm/ops/csrc/cuda`` run on the CPU against the reference.

No GPU is needed: ``tests/cuda_emulation`` compiles the kernel bodies with a C++ compiler and
starts them through the CUDA build's own launch code (``partition_launch.cuh``: buffers and
their initial values, the stats layout, grid sizes), running each grid as loops over blocks
and threads. Every case runs with two emulated launches: the grid of an H200 (132
multiprocessors: one thread per element, the last block partly idle) and the grid of a single
multiprocessor run in reverse order (32 blocks, so the grid-stride loops go round several
times and the atomics add in another order).
"""
import pytest
import torch

from dualformer_mm.ops import partition as ref
from tests.cuda_emulation import EmulatedOps, load

# (multiprocessors, reverse): an H200's grid, and one multiprocessor's run backwards.
LAUNCHES = [pytest.param((132, False), id='sm132'),
            pytest.param((1, True), id='sm1-reversed')]
# (dtype, rtol, atol) against the reference: those of tests/test_ops_partition_ext.py, and
# tests/test_partition_ops.py's for float64.
DTYPES = [
    pytest.param(torch.float64, 1e-10, 1e-12, id='fp64'),
    pytest.param(torch.float32, 1e-5, 1e-6, id='fp32'),
    pytest.param(torch.float16, 2e-3, 2e-3, id='fp16'),
    pytest.param(torch.bfloat16, 1.6e-2, 1.6e-2, id='bf16'),
]


class Reference:
    """The PyTorch reference ops with the signatures of :class:`EmulatedOps`."""

    partition_softmax_pool = staticmethod(ref.partition_softmax_pool_pytorch)
    partition_softmax = staticmethod(ref.partition_softmax_pytorch)
    partition_mean = staticmethod(ref.partition_mean_pytorch)
    partition_distribute = staticmethod(ref.partition_distribute_pytorch)


@pytest.fixture(scope='module')
def lib():
    """The emulation, compiled once (torch's extension cache keeps the build between runs)."""
    return load()


@pytest.fixture(params=LAUNCHES)
def emulated(lib, request):
    lib.launches()  # start each test with an empty launch log
    return EmulatedOps(lib, *request.param)


def make_inputs(g, n, d, k, dtype):
    scores = (torch.randn(g, n, d) * 3).to(dtype)
    values = torch.randn(g, n, d).to(dtype)
    codes = torch.randint(0, k, (g, n))
    codes[0] = k - 1  # group 0: every token in the last partition, K-1 empty partitions
    return scores, values, codes


def in_partition(codes, k):
    """(G, K, N, 1) mask: token n belongs to partition k."""
    return (codes.unsqueeze(1) == torch.arange(k).view(1, k, 1)).unsqueeze(-1)


@pytest.mark.parametrize('bits', [1, 2, 3, 5, 9, 62])
@pytest.mark.parametrize('tokens', [1, 13, 257])
def test_lsh_pack_equals_reference_hash(emulated, bits, tokens):
    # The CUDA path of lsh_hash: the reference's float64 einsum, then the packing kernel.
    x = torch.randn(2, 3, tokens, 7)
    planes = torch.randn(3, 7, bits)
    proj = torch.einsum('bhnd,hdp->bhnp', x.double(), planes.double())
    codes = emulated.lsh_pack(proj)
    assert codes.dtype == torch.long and codes.shape == (2, 3, tokens)
    assert torch.equal(codes, ref.lsh_hash_pytorch(x, planes))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
def test_lsh_pack_signs(emulated, dtype):
    # Zeros and -0.0 count as positive, NaN as negative, -1e-50 (float64) as negative although
    # it rounds to -0.0 in float32; the kernel compares in the projection's own precision.
    proj = torch.tensor([[0.0, -0.0, float('nan'), -1.0, 2.0, -float('inf'), float('inf')]],
                        dtype=dtype)
    assert emulated.lsh_pack(proj).tolist() == [0b1010011]
    if dtype == torch.float64:
        tiny = torch.tensor([[-1e-50, 1e-50]], dtype=dtype)
        assert emulated.lsh_pack(tiny).tolist() == [0b10]


def forward_backward(ops, scores, values, codes, k):
    """Every op with a weighted loss (each output element gets its own gradient)."""
    s = scores.clone().requires_grad_()
    v = values.clone().requires_grad_()
    soft = ops.partition_softmax_pool(s, v, codes, k)
    mean, counts = ops.partition_mean(v, codes, k)
    spread = ops.partition_distribute(torch.cat([soft, mean], -1), codes)
    weights = ops.partition_softmax(s, codes, k)
    gen = torch.Generator().manual_seed(1)
    loss_dtype = torch.promote_types(scores.dtype, torch.float32)
    weight = torch.randn(spread.shape, generator=gen).to(loss_dtype)
    weight_tokens = torch.randn(weights.shape, generator=gen).to(loss_dtype)
    ((spread.to(loss_dtype) * weight).sum() +
     (weights.to(loss_dtype) * weight_tokens).sum()).backward()
    return dict(soft=soft.detach(), mean=mean.detach(), counts=counts, spread=spread.detach(),
                weights=weights.detach(), grad_s=s.grad, grad_v=v.grad)


# (G, N, D, K): sizes that are not multiples of the 256-thread block; K up to 64 with most
# partitions empty and an odd channel count.
SHAPES = [(5, 203, 40, 8), (3, 97, 7, 64), (2, 1, 3, 4)]


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('dtype,rtol,atol', DTYPES)
def test_forward_backward_match_reference(emulated, shape, dtype, rtol, atol):
    g, n, d, k = shape
    scores, values, codes = make_inputs(g, n, d, k, dtype)
    got = forward_backward(emulated, scores, values, codes, k)
    want = forward_backward(Reference, scores, values, codes, k)
    counts = got.pop('counts')
    assert torch.equal(counts, want.pop('counts'))
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        # The atomics add in another order than the reference's index_add: where a gradient
        # cancels (the score gradients, w (g - sum_j w_j g_j)), fp32 results then differ by
        # about 1e-5 of the tensor's largest element, as much as the fp32 reference differs
        # from float64. So atol is relative to that element too.
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=max(atol, rtol * scale),
                                   msg=lambda m, name=name: f'{name}: {m}')
    # Empty partitions give exact zeros.
    empty = counts == 0
    assert empty.any()
    assert (got['soft'][empty] == 0).all() and (got['mean'][empty] == 0).all()
    # The distribution is a copy: bit-identical.
    pooled = torch.randn(g, k, d).to(dtype)
    assert torch.equal(emulated.partition_distribute(pooled, codes),
                       ref.partition_distribute_pytorch(pooled, codes))


@pytest.mark.parametrize('shape', SHAPES[:2], ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.float16], ids=str)
def test_stats_layout(lib, emulated, shape, dtype):
    # stats (2, G, K, D) as the backward ops read them. Softmax pooling: log-sum-exp (-inf for
    # an empty partition) and the unrounded pooled features; per-token softmax: the maximum
    # (-inf when empty) and the sum of exp(s - max) (0 when empty).
    g, n, d, k = shape
    scores, values, codes = make_inputs(g, n, d, k, dtype)
    acc = torch.promote_types(dtype, torch.float32)
    member = in_partition(codes, k)
    s = torch.where(member, scores.to(acc).unsqueeze(1), float('-inf'))  # (G, K, N, D)
    lse, peak = s.logsumexp(2), s.amax(2)
    total = torch.where(member, (s - peak.unsqueeze(2)).exp(), 0).sum(2)

    pooled, stats = lib.softmax_pool_forward(scores, values, codes, k, *emulated.launch)
    assert stats.shape == (2, g, k, d) and stats.dtype == acc
    torch.testing.assert_close(stats[0], lse, rtol=1e-5, atol=1e-5)
    assert torch.equal(stats[1].to(dtype), pooled)
    assert torch.equal(stats[0].isneginf(), member.squeeze(-1).any(2).logical_not()
                       .unsqueeze(-1).expand(g, k, d))

    weights, stats = lib.softmax_forward(scores, codes, k, *emulated.launch)
    assert stats.shape == (2, g, k, d) and stats.dtype == acc
    assert torch.equal(stats[0], peak)  # a maximum is exact whatever the order
    torch.testing.assert_close(stats[1], total, rtol=1e-5, atol=1e-5)


def test_atomic_max_signed_zero_and_infinities(emulated):
    # The float atomic max works on bit patterns: -0.0 must beat -inf and lose to +0.0 in
    # either order of arrival, and negative values must order in reverse as integers.
    parts = [[-0.0, -0.0], [-0.0, 0.0], [0.0, -0.0], [-float('inf')] * 2,
             [-float('inf'), -3.0], [-0.0, -float('inf')], [-2.0, -1.0, -5.0],
             [1.5, 3.0, -7.0], []]
    want = [-0.0, 0.0, 0.0, -float('inf'), -3.0, -0.0, -1.0, 3.0, -float('inf')]
    flat = [v for p in parts for v in p]
    codes = torch.tensor([[i for i, p in enumerate(parts) for _ in p]])
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        scores = torch.tensor(flat, dtype=dtype).view(1, -1, 1)
        _, stats = emulated.lib.softmax_forward(scores, codes, len(parts), *emulated.launch)
        peak = stats[0, 0, :, 0]
        expected = torch.tensor(want, dtype=peak.dtype)
        assert torch.equal(peak, expected), (dtype, peak)
        assert torch.equal(peak.signbit(), expected.signbit()), (dtype, peak)
        # And the weights, NaN where a partition holds only -inf, as in the reference.
        torch.testing.assert_close(emulated.partition_softmax(scores, codes, len(parts)),
                                   ref.partition_softmax_pytorch(scores, codes, len(parts)),
                                   equal_nan=True)


@pytest.mark.parametrize('dtype,rtol,atol', DTYPES[:2])
def test_nan_and_inf_scores(emulated, dtype, rtol, atol):
    # A NaN or inf score makes its partition's channel NaN, as in the reference, never a zero.
    scores, values, codes = make_inputs(2, 30, 5, 4, dtype)
    scores[1, 3, 2] = float('nan')
    scores[1, 7, 4] = float('inf')
    scores[1, 9, 0] = -float('inf')  # a -inf score next to finite ones: weight 0
    results = {}
    for name, ops in (('emulated', emulated), ('reference', Reference)):
        s, v = scores.clone().requires_grad_(), values.clone().requires_grad_()
        out = ops.partition_softmax_pool(s, v, codes, 4)
        out.backward(torch.ones_like(out))
        s2 = scores.clone().requires_grad_()
        w = ops.partition_softmax(s2, codes, 4)
        w.backward(torch.ones_like(w))
        results[name] = (out.detach(), s.grad, v.grad, w.detach(), s2.grad)
    out, w = results['emulated'][0], results['emulated'][3]
    assert out[1, codes[1, 3], 2].isnan() and out[1, codes[1, 7], 4].isnan()
    assert out.isnan().sum() == 2 and (out[0, :-1] == 0).all()
    assert w.isnan().sum() == (codes[1] == codes[1, 3]).sum() + (codes[1] == codes[1, 7]).sum()
    for got, want in zip(results['emulated'], results['reference']):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)


def test_gradcheck_float64(emulated):
    g, n, d, k = 2, 11, 3, 4
    scores, values, codes = make_inputs(g, n, d, k, torch.float64)
    scores.requires_grad_()
    values.requires_grad_()
    pooled = torch.randn(g, k, d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, v: emulated.partition_softmax_pool(s, v, codes, k), (scores, values))
    assert torch.autograd.gradcheck(lambda v: emulated.partition_mean(v, codes, k)[0],
                                    (values,))
    assert torch.autograd.gradcheck(lambda p: emulated.partition_distribute(p, codes),
                                    (pooled,))
    assert torch.autograd.gradcheck(lambda s: emulated.partition_softmax(s, codes, k),
                                    (scores,))


def test_half_precision_accumulation(emulated):
    # 70k fp16 tokens of 1000 sum past fp16's range; the kernels accumulate in fp32.
    big = torch.full((1, 70000, 2), 1000.0, dtype=torch.float16)
    codes = torch.zeros(1, 70000, dtype=torch.long)
    mean, counts = emulated.partition_mean(big, codes, 2)
    assert torch.equal(mean[0, 0], big[0, 0]) and counts.tolist() == [[70000, 0]]
    # The distribution's backward sums 70k gradients of 0.1: a sum in fp16 would stall at 256
    # (where its spacing exceeds 2 * 0.1); in fp32 it reaches 7000, cast to fp16 once.
    small = torch.full((1, 70000, 2), 0.1, dtype=torch.float16)
    grad = emulated.lib.distribute_backward(small, codes, 2, *emulated.launch)
    assert grad.dtype == torch.float16
    torch.testing.assert_close(grad[0, 0].float(), small[0, 0].float() * 70000, rtol=1e-3,
                               atol=0)
    huge = torch.full((1, 5, 2), 6e4, dtype=torch.float16)
    soft = emulated.partition_softmax_pool(huge, huge, codes[:, :5], 2)
    assert torch.equal(soft[0, 0], huge[0, 0])


def test_zero_sizes(emulated):
    # D = 0: nothing to pool, but the counts still come from the codes; N = 0 and G = 0: no
    # kernel to launch, outputs of the right shapes.
    values = torch.zeros(2, 6, 0)
    codes = torch.tensor([[0, 2, 2, 1, 2, 0], [3, 3, 3, 3, 3, 3]])
    means, counts = emulated.partition_mean(values, codes, 4)
    assert means.shape == (2, 4, 0) and counts.tolist() == [[2, 1, 3, 0], [0, 0, 0, 6]]
    assert emulated.partition_softmax_pool(values, values, codes, 4).shape == (2, 4, 0)
    assert emulated.partition_softmax(values, codes, 4).shape == (2, 6, 0)
    assert emulated.partition_distribute(means, codes).shape == (2, 6, 0)
    tokens = torch.zeros(2, 0, 3)
    soft = emulated.partition_softmax_pool(tokens, tokens, codes[:, :0], 4)
    assert torch.equal(soft, torch.zeros(2, 4, 3))
    means, counts = emulated.partition_mean(tokens, codes[:, :0], 4)
    assert torch.equal(means, torch.zeros(2, 4, 3)) and not counts.any()
    assert emulated.partition_softmax(tokens, codes[:, :0], 4).shape == (2, 0, 3)
    assert emulated.lsh_pack(torch.zeros(0, 3, 5)).shape == (0, 3)


@pytest.mark.parametrize('bad', [4, -1])
def test_codes_out_of_range_trip_the_device_assert(emulated, bad):
    values = torch.randn(1, 5, 2)
    codes = torch.tensor([[0, 1, bad, 1, 0]])
    pooled = torch.randn(1, 4, 2)
    lib, launch = emulated.lib, emulated.launch
    calls = {
        'softmax_pool': lambda: lib.softmax_pool_forward(values, values, codes, 4, *launch),
        'softmax': lambda: lib.softmax_forward(values, codes, 4, *launch),
        'mean': lambda: lib.mean_forward(values, codes, 4, *launch),
        'mean_backward': lambda: lib.mean_backward(pooled, codes,
                                                   torch.ones(1, 4, dtype=torch.long), *launch),
        'distribute': lambda: lib.distribute_forward(pooled, codes, *launch),
        'distribute_backward': lambda: lib.distribute_backward(values, codes, 4, *launch),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=r'codes must lie in \[0, num_partitions\)'):
            call()


def test_atomic_ops_refuse_deterministic_mode(emulated):
    # The launch code alerts for the ops that sum with atomics, and only for those.
    scores, values, codes = make_inputs(2, 9, 3, 4, torch.float32)
    lib, launch = emulated.lib, emulated.launch
    pooled, stats = lib.softmax_pool_forward(scores, values, codes, 4, *launch)
    weights, token_stats = lib.softmax_forward(scores, codes, 4, *launch)
    means, counts = lib.mean_forward(values, codes, 4, *launch)
    alerting = {
        'partition_softmax_pool': lambda: lib.softmax_pool_forward(scores, values, codes, 4,
                                                                   *launch),
        'partition_softmax': lambda: lib.softmax_forward(scores, codes, 4, *launch),
        'partition_softmax_backward': lambda: lib.softmax_backward(scores, scores, codes,
                                                                   token_stats, *launch),
        'partition_mean': lambda: lib.mean_forward(values, codes, 4, *launch),
        'partition_distribute_backward': lambda: lib.distribute_backward(values, codes, 4,
                                                                         *launch),
    }
    exact = [lambda: lib.softmax_pool_backward(pooled, scores, values, codes, stats, *launch),
             lambda: lib.mean_backward(means, codes, counts, *launch),
             lambda: lib.distribute_forward(means, codes, *launch),
             lambda: lib.lsh_pack(scores, *launch)]
    mode = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        for name, call in alerting.items():
            with pytest.raises(RuntimeError, match=rf'dualformer::{name} \(CUDA\)'):
                call()
        for call in exact:
            call()
    finally:
        torch.use_deterministic_algorithms(mode)


def test_grid_sizes(emulated):
    # At most 32 blocks of 256 threads per multiprocessor: on one multiprocessor the 40600
    # elements of this mean take 32 blocks, so every thread loops over several elements (and
    # the results above were right); on an H200 each element gets its own thread.
    values, codes = torch.randn(5, 203, 40), torch.randint(0, 8, (5, 203))
    emulated.partition_mean(values, codes, 8)
    sums, finalize = emulated.lib.launches().tolist()
    sms = emulated.launch[0]
    assert sums == [min(-(-40600 // 256), 32 * sms), 256]
    assert finalize == [-(-5 * 8 * 40 // 256), 256]
    if sms == 1:
        assert sums[0] * sums[1] < values.numel()
