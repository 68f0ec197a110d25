"""The partition ops and DualFormer under autocast (mixed fp32 / fp16 / bf16 inputs).

Autocast runs linears and convs in half precision and keeps some ops (on CUDA GroupNorm and
LayerNorm) in fp32, so MHPA's ops receive fp32 scores beside half values. Both backends must
then give the reference's result in the reference's dtype. Checked here on CPU autocast, with
the mixed dtypes made explicit at the op level, and for whole training steps.
"""
import itertools

import pytest
import torch

from dualformer_mm import DualFormer, compat, ops
from dualformer_mm.ops import partition as ref_ops
from tests.utils import TINY_ARCH

BACKENDS = ['ext', 'reference']
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
MIXED = [pair for pair in itertools.product(FLOATS, FLOATS) if pair[0] != pair[1]]
# float16 CPU autocast exists from torch 2.2 (compat.CPU_AUTOCAST_DTYPES).
AUTOCAST = [pytest.param(t, marks=pytest.mark.skipif(
    t not in compat.CPU_AUTOCAST_DTYPES, reason=f'torch {torch.__version__}: no {t} CPU autocast'))
    for t in (torch.float16, torch.bfloat16)]


def ids(pair):
    return '-'.join(str(t).split('.')[-1] for t in pair)


def inputs(dtypes, g=3, n=57, d=20, k=8):
    gen = torch.Generator().manual_seed(0)
    scores = (torch.randn(g, n, d, generator=gen) * 3).to(dtypes[0]).requires_grad_()
    values = torch.randn(g, n, d, generator=gen).to(dtypes[1]).requires_grad_()
    codes = torch.randint(0, k, (g, n), generator=gen)
    return scores, values, codes, k


def grads_of(out, *tensors):
    weight = torch.linspace(-1, 1, out.numel()).view(out.shape)
    return torch.autograd.grad((out.float() * weight).sum(), tensors)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('autocast', AUTOCAST, ids=['fp16', 'bf16'])
@pytest.mark.parametrize('dtypes', MIXED, ids=ids)
def test_softmax_pool_takes_mixed_dtypes(backend, autocast, dtypes):
    scores, values, codes, k = inputs(dtypes)
    with torch.autocast('cpu', dtype=autocast):
        with ops.use_backend(backend):
            out = ops.partition_softmax_pool(scores, values, codes, k)
        want = ref_ops.partition_softmax_pool_pytorch(scores, values, codes, k)
    assert out.dtype == want.dtype == values.dtype
    # Both compute in fp32 and round once to the values' dtype.
    torch.testing.assert_close(out, want, rtol=1e-2 if values.dtype != torch.float32 else 1e-5,
                               atol=1e-5)
    for got, ref in zip(grads_of(out, scores, values), grads_of(want, scores, values)):
        assert got.dtype == ref.dtype
        torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('autocast', AUTOCAST, ids=['fp16', 'bf16'])
@pytest.mark.parametrize('dtype', FLOATS, ids=['fp32', 'fp16', 'bf16'])
def test_single_input_ops_under_autocast(backend, autocast, dtype):
    scores, values, codes, k = inputs((dtype, dtype))
    pooled = torch.randn(3, k, 20).to(dtype).requires_grad_()
    cases = {
        'partition_softmax': ((scores, codes, k), (scores, )),
        'partition_mean': ((values, codes, k), (values, )),
        'partition_distribute': ((pooled, codes), (pooled, )),
    }
    for name, (args, wrt) in cases.items():
        with torch.autocast('cpu', dtype=autocast):
            with ops.use_backend(backend):
                out = getattr(ops, name)(*args)
            want = getattr(ref_ops, f'{name}_pytorch')(*args)
        out, want = (out[0], want[0]) if isinstance(out, tuple) else (out, want)
        assert out.dtype == want.dtype == dtype, name
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out, want, rtol=tol, atol=tol, msg=name)
        for got, ref in zip(grads_of(out, *wrt), grads_of(want, *wrt)):
            torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtypes', MIXED, ids=ids)
def test_lsh_hash_takes_mixed_dtypes(backend, dtypes):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, 8, generator=gen).to(dtypes[0])
    planes = torch.randn(3, 8, 3, generator=gen).to(dtypes[1])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with ops.use_backend(backend):
            codes = ops.lsh_hash(x, planes)
        want = ref_ops.lsh_hash_pytorch(x, planes)
    assert codes.dtype == torch.long
    assert torch.equal(codes, want)


def cast_norm_outputs_to_fp32(model: torch.nn.Module) -> None:
    """Make GroupNorm and LayerNorm return fp32, as CUDA autocast runs them (its fp32 list).

    CPU autocast leaves them in half precision, so without this the CPU test would never give
    MHPA the fp32-scores / half-values mix a GPU user's ``--amp`` run gives it.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            module.register_forward_hook(lambda m, args, out: out.float())


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('autocast', AUTOCAST, ids=['fp16', 'bf16'])
@pytest.mark.parametrize('norm,intra', [('BN', 'pool'), ('GN', 'pool'), ('LN', 'pool'),
                                        ('GN', 'token')])
def test_training_step_under_autocast(backend, autocast, norm, intra, monkeypatch):
    norm_cfg = dict(type='GN', num_groups=1) if norm == 'GN' else dict(type=norm)
    torch.manual_seed(0)
    # One block per stage: every block gives MHPA the same mix of dtypes.
    model = DualFormer(TINY_ARCH, norm_cfg=norm_cfg, attn_cfg=dict(intra=intra),
                       drop_path_rate=0., out_indices=(3, )).train()
    if norm != 'BN':
        cast_norm_outputs_to_fp32(model)
    seen = set()
    op_name = 'partition_softmax_pool' if intra == 'pool' else 'partition_softmax'
    op = getattr(ops, op_name)
    monkeypatch.setattr(ops, op_name, lambda *a: seen.add(tuple(
        t.dtype for t in a if isinstance(t, torch.Tensor) and t.is_floating_point())) or op(*a))
    head = torch.nn.Linear(TINY_ARCH['channels'][-1], 10)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, labels = torch.rand(2, 3, 48, 48), torch.tensor([3, 7])
    with ops.use_backend(backend):
        with torch.autocast('cpu', dtype=autocast):
            logits = head(model(x)[-1].mean((2, 3)))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
    if norm != 'BN' and intra == 'pool':
        assert (torch.float32, autocast) in seen, f'MHPA never got mixed dtypes: {seen}'
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)
