"""Partition numerics: finite outputs and gradients in fp32 and fp16/bf16 autocast, every case.

MHPA (paper section 3.2) normalises a softmax inside data-dependent partitions and divides by
partition counts and importance sums; each of these can produce NaN or Inf when a partition
is empty, holds every token, sees identical tokens, or sees huge or tiny values, and half
precision makes it likelier. Checked for the module and the whole backbone, with both
backends of the partition ops, in fp32 and in fp16 and bf16 autocast, training mode.
"""
import pytest
import torch

from dualformer_mm import DualFormer, compat, ops
from dualformer_mm.models import PartitionAttention
from tests.utils import TINY_ARCH

BACKENDS = ['ext', 'reference']
# None: plain fp32. The autocast dtypes are the ones CPU autocast offers (float16 from torch
# 2.2: compat.CPU_AUTOCAST_DTYPES).
AUTOCAST = [pytest.param(t, marks=pytest.mark.skipif(
    t not in compat.CPU_AUTOCAST_DTYPES, reason=f'torch {torch.__version__}: no {t} CPU autocast'))
    for t in (torch.float16, torch.bfloat16)]
PRECISIONS = [None] + AUTOCAST


def make_input(case: str, shape=(2, 32, 12, 14)) -> torch.Tensor:
    """An MHPA input for one of the partition edge cases."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    if case == 'identical':  # every token the same vector: one partition, 7 empty
        x = x[:, :, :1, :1].expand(shape).contiguous()
    elif case == 'huge':
        x = x * 1e4
    elif case == 'tiny':
        x = x * 1e-6
    return x.requires_grad_()


def run(module: torch.nn.Module, x: torch.Tensor, precision, reduce: str = 'sum') -> tuple:
    """Forward and backward of a fixed linear loss, under autocast when ``precision`` is set."""
    with torch.autocast('cpu', dtype=precision or torch.bfloat16, enabled=precision is not None):
        out = module(x)
        outs = out if isinstance(out, tuple) else (out, )
        loss = sum(getattr(o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape), reduce)()
                   for o in outs)
    loss.backward()
    return outs


def assert_finite(module: torch.nn.Module, x: torch.Tensor, outs: tuple) -> None:
    """Outputs, the input gradient and every parameter gradient are finite."""
    for out in outs:
        assert torch.isfinite(out).all(), 'non-finite output'
    assert torch.isfinite(x.grad).all(), 'non-finite input gradient'
    for name, param in module.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), f'non-finite gradient of {name}'


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('precision', PRECISIONS, ids=['fp32', 'fp16', 'bf16'])
@pytest.mark.parametrize('case', ['random', 'one_partition', 'identical', 'huge', 'tiny'])
def test_partition_attention_is_finite(backend, precision, case):
    torch.manual_seed(0)
    attn = PartitionAttention(32, num_heads=2, num_partitions=8, sr_ratio=2).train()
    if case == 'one_partition':
        attn.planes.zero_()  # every projection is 0: all tokens in partition 0, 7 empty
    x = make_input(case)
    with ops.use_backend(backend):
        outs = run(attn, x, precision)
        if case in ('one_partition', 'identical'):
            tokens = attn.down(x.detach()).flatten(2).transpose(1, 2).view(2, -1, 2, 16)
            codes = attn.partition_codes(tokens.transpose(1, 2))
            assert (codes == codes[..., :1]).all(), 'expected all tokens in one partition'
    assert_finite(attn, x, outs)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('precision', PRECISIONS, ids=['fp32', 'fp16', 'bf16'])
@pytest.mark.parametrize('case', ['identical', 'huge', 'tiny'])
def test_backbone_is_finite(backend, precision, case):
    torch.manual_seed(0)
    # One block per stage: the edge cases reach every stage's MHPA as in a deeper model.
    model = DualFormer(TINY_ARCH, drop_path_rate=0.).train()
    x = make_input(case, shape=(2, 3, 64, 64))
    with ops.use_backend(backend):
        # A mean, as training losses are: with a sum, the 1e-6 input's stem BatchNorm gradient
        # is ~8e5 per element (median; the largest 6.9e6), beyond fp16's 65504, which AMP's
        # loss scaler handles (it backs off), and which says nothing about the partitions.
        outs = run(model, x, precision, reduce='mean')
    assert len(outs) == 4
    assert_finite(model, x, outs)


@pytest.mark.parametrize('precision', AUTOCAST, ids=['fp16', 'bf16'])
def test_inference_under_autocast(precision):
    # Eval without autograd takes the tiled CPU FFN in fp32; under autocast it must still run
    # and agree with fp32 to half precision.
    torch.manual_seed(0)
    model = DualFormer(TINY_ARCH).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=precision):
            outs = model(x)
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.15)
