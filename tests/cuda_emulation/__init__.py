"""The CUDA kernels of ``dualformer_mm`` run on the CPU, for the tests.

``emulated_ops.cpp`` compiles the kernel bodies of ``ops/csrc/cuda/partition_kernels.cuh``
with a C++ compiler through the shim of ``include/`` and starts them through the launch code
of the CUDA build (``ops/csrc/cuda/partition_launch.cuh``: buffers, initial values, stats
layout, grid sizes), with a launcher that runs each grid as loops over blocks and threads.
:func:`load` builds it with ``torch.utils.cpp_extension`` (in torch's extension cache, rebuilt
when a source or header changes) and :class:`EmulatedOps` wraps the ops with autograd as
``ops/csrc/autograd.cpp`` wraps the real ones.
"""
import os.path as osp
from typing import Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
KERNEL_DIR = osp.join(ROOT, 'dualformer_mm', 'ops', 'csrc', 'cuda')
NAME = 'dualformer_cuda_emulation'
# One translation unit; -O1 keeps the compile short and the emulated grids fast enough.
CFLAGS = ['-O1']
_loaded = False


def load(verbose: bool = False):
    """Compile (or reuse) the emulation and return its ops, ``torch.ops.<NAME>``.

    Args:
        verbose (bool): Print the compiler's commands.

    Example:
        >>> lib = load()
        >>> lib.lsh_pack(torch.tensor([[1.0, -1.0]]), 132, False)
        tensor([1])
    """
    global _loaded
    if not _loaded:
        from torch.utils import cpp_extension
        # The shim's folder first: its ATen/cuda/Atomic.cuh stands in for ATen's. Ninja
        # tracks the included headers, so an edit of a kernel rebuilds.
        cpp_extension.load(NAME, [osp.join(HERE, 'emulated_ops.cpp')],
                           extra_include_paths=[osp.join(HERE, 'include'), KERNEL_DIR],
                           extra_cflags=CFLAGS, is_python_module=False, verbose=verbose)
        _loaded = True
    return getattr(torch.ops, NAME)


class EmulatedOps:
    """The partition ops with their CUDA kernels emulated, forward and backward.

    Args:
        lib: :func:`load`'s ops.
        sms (int): Multiprocessors of the emulated device; the grid has at most 32 blocks per
            multiprocessor (132 for an H200; 1 makes the grid-stride loops go round).
        reverse (bool): Run blocks and threads in reverse order.

    Example:
        >>> ops = EmulatedOps(load(), sms=1, reverse=True)
        >>> ops.partition_mean(torch.ones(1, 3, 2), torch.tensor([[0, 0, 1]]), 2)[1]
        tensor([[2, 1]])
    """

    def __init__(self, lib, sms: int, reverse: bool):
        self.lib, self.launch = lib, (sms, reverse)

    def lsh_pack(self, proj: Tensor) -> Tensor:
        return self.lib.lsh_pack(proj, *self.launch)

    def partition_softmax_pool(self, scores: Tensor, values: Tensor, codes: Tensor,
                               k: int) -> Tensor:
        return _SoftmaxPool.apply(self, scores, values, codes, k)[0]

    def partition_softmax(self, scores: Tensor, codes: Tensor, k: int) -> Tensor:
        return _Softmax.apply(self, scores, codes, k)[0]

    def partition_mean(self, x: Tensor, codes: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        return _Mean.apply(self, x, codes, k)

    def partition_distribute(self, pooled: Tensor, codes: Tensor) -> Tensor:
        return _Distribute.apply(self, pooled, codes)


class _SoftmaxPool(torch.autograd.Function):

    @staticmethod
    def forward(ctx, ops, scores, values, codes, k):
        pooled, stats = ops.lib.softmax_pool_forward(scores, values, codes, k, *ops.launch)
        ctx.ops = ops
        ctx.save_for_backward(scores, values, codes, stats)
        ctx.mark_non_differentiable(stats)
        return pooled, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _):
        grad_s, grad_v = ctx.ops.lib.softmax_pool_backward(grad, *ctx.saved_tensors,
                                                           *ctx.ops.launch)
        return None, grad_s, grad_v, None, None


class _Softmax(torch.autograd.Function):

    @staticmethod
    def forward(ctx, ops, scores, codes, k):
        weights, stats = ops.lib.softmax_forward(scores, codes, k, *ops.launch)
        ctx.ops = ops
        ctx.save_for_backward(scores, codes, stats)
        ctx.mark_non_differentiable(stats)
        return weights, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _):
        return (None, ctx.ops.lib.softmax_backward(grad, *ctx.saved_tensors, *ctx.ops.launch),
                None, None)


class _Mean(torch.autograd.Function):

    @staticmethod
    def forward(ctx, ops, x, codes, k):
        means, counts = ops.lib.mean_forward(x, codes, k, *ops.launch)
        ctx.ops = ops
        ctx.save_for_backward(codes, counts)
        ctx.mark_non_differentiable(counts)
        return means, counts

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _):
        return (None, ctx.ops.lib.mean_backward(grad, *ctx.saved_tensors, *ctx.ops.launch),
                None, None)


class _Distribute(torch.autograd.Function):

    @staticmethod
    def forward(ctx, ops, pooled, codes):
        ctx.ops, ctx.k = ops, pooled.shape[1]
        ctx.save_for_backward(codes)
        return ops.lib.distribute_forward(pooled, codes, *ops.launch)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        codes, = ctx.saved_tensors
        return None, ctx.ops.lib.distribute_backward(grad, codes, ctx.k, *ctx.ops.launch), None
