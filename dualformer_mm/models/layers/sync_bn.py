# Copyright (c) dualformer-mm contributors.
"""Synchronised BatchNorm that runs on CPU process groups (gloo).

The paper names no norm layer. Our detection and segmentation configs choose synchronised
BatchNorm in the backbone (``norm_cfg=dict(type='SyncBN')``, see ``docs/recipes.md``), so that
its statistics span the paper's whole batch of 16 or 32 images on 8 GPUs (sections 4.2-4.3).
``torch.nn.SyncBatchNorm`` refuses CPU tensors, so a distributed run on CPU machines would
otherwise fall back to per-process BatchNorm, whose statistics cover only each process's share
of the batch and whose gradients differ from a single-process run.
:class:`CPUSyncBatchNorm` all-reduces the per-process statistics with any backend, so N
processes with the batch split between them compute what one process computes on the whole
batch (``tests/test_distributed.py`` checks the gradients).
"""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.dist import get_rank, get_world_size
from mmengine.registry import MODELS
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group, with the same all-reduce for the gradient."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Every process's loss depends on every process's statistics, so the gradient of the
        # summed losses reaching this process's statistics is the sum of all processes'.
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


@MODELS.register_module('CPUSyncBN')
class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span every process of the default group.

    Outside training, or in a single process, it is exactly ``BatchNorm``. In training with
    several processes, each process computes the count, mean and sum of squared deviations of
    its share per channel in fp32, the shares are combined with one all-reduce (a gather
    written as a sum, so gloo serves it and autograd flows through it), and the merged mean
    and biased variance normalise the input, as one process would with the whole batch. The
    running statistics are updated with the unbiased variance of the whole batch, like
    ``torch.nn.SyncBatchNorm``. Module and parameter names match ``BatchNorm``, so
    checkpoints move freely between the two. ``tools/train.py`` and ``tools/test.py`` use it
    for ``type='SyncBN'`` configs on machines without CUDA.

    Args:
        num_features (int): Channels ``C`` of an ``(N, C, ...)`` input.
        eps (float): Added to the variance. Defaults to 1e-5.
        momentum (float, optional): Running statistics momentum; None for a cumulative
            average. Defaults to 0.1.
        affine (bool): Learnable scale and shift. Defaults to True.
        track_running_stats (bool): Keep running statistics. Defaults to True.

    Example:
        >>> bn = CPUSyncBatchNorm(8)
        >>> bn(torch.rand(2, 8, 5, 5)).shape  # no process group: plain BatchNorm
        torch.Size([2, 8, 5, 5])
    """

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every BatchNorm layer replaced by a ``CPUSyncBatchNorm``.

        The CPU counterpart of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: parameters,
        running statistics and train/eval mode are kept (shared, not copied).
        """
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f'CPUSyncBatchNorm expects (N, C, ...) input, got {input.dim()}D')

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        world_size = get_world_size()
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or world_size == 1:
            return super().forward(input)

        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = (1, -1) + (1, ) * (input.dim() - 2)  # a per-channel vector against the input
        local = input.float()
        count = local.new_tensor(float(input.numel() // channels))
        if input.numel():
            mean = local.mean(dims)
            sq_dev = (local - mean.view(shape)).square().sum(dims)
        else:  # a process with no samples contributes nothing
            mean = sq_dev = local.new_zeros(channels)
        # Row r holds process r's (count, mean, squared deviations); the others are zero, so
        # a sum over processes gathers all rows.
        rows = local.new_zeros(world_size, 1 + 2 * channels)
        rows[get_rank()] = torch.cat([count.view(1), mean, sq_dev])
        rows = _AllReduceSum.apply(rows)
        counts, means, sq_devs = rows[:, :1], rows[:, 1:1 + channels], rows[:, 1 + channels:]
        total = counts.sum()
        if total <= 1:
            raise ValueError('CPUSyncBatchNorm: expected more than 1 value per channel in '
                             f'training over all processes, got input {tuple(input.shape)} '
                             f'on {world_size} processes')
        global_mean = (counts * means).sum(0) / total
        # Chan et al.'s merge of per-process deviations: numerically stable, unlike E[x^2]-m^2.
        sq_dev_all = (sq_devs + counts * (means - global_mean).square()).sum(0)
        var = sq_dev_all / total

        if self.training and self.track_running_stats:
            self._update_running_stats(global_mean.detach(), (sq_dev_all / (total - 1)).detach())
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            out = (local - global_mean.view(shape)) * (scale * self.weight.float()).view(shape)
            out = out + self.bias.float().view(shape)
        else:
            out = (local - global_mean.view(shape)) * scale.view(shape)
        return out.to(input.dtype)

    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """Exponential (or, with ``momentum=None``, cumulative) average, as BatchNorm does."""
        self.num_batches_tracked.add_(1)
        factor: Optional[float] = self.momentum
        if factor is None:
            factor = 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var.to(self.running_var.dtype),
                                               alpha=factor)
