# Copyright (c) dualformer-mm contributors.
"""Gradient checkpointing of a module whose BatchNorm statistics must be updated once per step.

``torch.utils.checkpoint`` runs a module's forward again in the backward pass, in training
mode, so every BatchNorm inside would update its running mean and variance (and
``num_batches_tracked``) twice per step. :func:`checkpoint_keeping_statistics` runs that
re-computation inside :func:`keep_running_statistics`, which copies them back.
"""
import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def keep_running_statistics(module: nn.Module) -> Iterator[None]:
    """Undo what the code run inside does to ``module``'s BatchNorm running statistics.

    The statistics of every BatchNorm of ``module`` in training mode are cloned on entry and
    copied back on exit; the copies stay on the device (no host synchronisation).

    Args:
        module (nn.Module): The module whose BatchNorm layers to guard.

    Example:
        >>> bn = nn.BatchNorm2d(3).train()
        >>> with keep_running_statistics(bn):
        ...     _ = bn(torch.rand(2, 3, 4, 4))
        >>> int(bn.num_batches_tracked), bool(bn.running_mean.eq(0).all())
        (0, True)
    """
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in module.modules()
             if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, mean, var, count in saved:
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)


def checkpoint_keeping_statistics(function: Callable[[Tensor], Tensor], x: Tensor,
                                  module: nn.Module) -> Tensor:
    """``function(x)`` with gradient checkpointing; its re-run in the backward pass leaves the
    BatchNorm statistics of ``module`` (the module ``function`` runs) as one forward left them.

    Args:
        function (Callable): The forward to checkpoint, e.g. ``block._forward``.
        x (Tensor): Its input.
        module (nn.Module): The module whose BatchNorm layers ``function`` runs.

    Returns:
        Tensor: ``function(x)``, without its intermediate activations kept for the backward.

    Example:
        >>> bn = nn.BatchNorm1d(3).train()
        >>> out = checkpoint_keeping_statistics(bn, torch.rand(4, 3, requires_grad=True), bn)
        >>> out.sum().backward()
        >>> int(bn.num_batches_tracked)
        1
    """
    def contexts():
        return contextlib.nullcontext(), keep_running_statistics(module)

    return cp.checkpoint(function, x, use_reentrant=False, context_fn=contexts)
