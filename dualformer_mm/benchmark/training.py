# Copyright (c) dualformer-mm contributors.
"""The training step that ``tools/benchmarks/train_step.py`` times: a linear classifier on a
backbone, and one optimizer step under the run's autocast and loss scaling.
"""
import math
from typing import Callable, Dict, Optional

import torch
from torch import nn

from .options import Settings, autocast_context

NUM_CLASSES = 1000  # ImageNet-1K, the classification head of the backbone part
GRAD_SCALER_INIT = 2.0**16  # torch.amp.GradScaler's default initial loss scale


class LinearClassifier(nn.Module):
    """A backbone with a global-average-pool + linear head on its last output.

    Args:
        backbone (nn.Module): Returns a tuple of (N, C, H, W) maps, the last one used.
        channels (int): C of the last map.
        num_classes (int): Outputs of the head. Defaults to 1000.

    Example:
        >>> from dualformer_mm.benchmark.zoo import build_model
        >>> net = LinearClassifier(build_model('dualformer-t'), 320)
        >>> net(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 1000])
    """

    def __init__(self, backbone: nn.Module, channels: int,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def needs_grad_scaler(settings: Settings) -> bool:
    """Whether training under these settings scales its loss.

    fp16 autocast gives fp16 gradients, whose small values underflow to zero unless the
    loss is scaled up first (``torch.amp.GradScaler``), on any device. bf16 has fp32's
    exponent range and, like fp32, needs no scaling.

    Example:
        >>> s = Settings(device='cuda', threads=1, amp=True, amp_dtype='fp16',
        ...              channels_last=False, compile=False, warmup=0, repeat=1, iters=1)
        >>> needs_grad_scaler(s)
        True
    """
    return settings.amp and settings.amp_dtype == 'fp16'


class TrainStep:
    """One training step, as a closure for
    :func:`.measure.time_interleaved`.

    Runs ``loss_fn`` (the forward and the loss) under the run's autocast, back-propagates
    (through a ``torch.amp.GradScaler`` when :func:`needs_grad_scaler`), steps the optimizer
    and sets the gradients to None, as training loops do between steps. No host
    synchronisation of its own (the loss stays a tensor), so CUDA work queues as in
    training; a GradScaler checks for overflow on the host, as it does in training.

    Args:
        loss_fn (Callable[[], torch.Tensor]): Forward and loss, returning the scalar loss.
        optimizer (torch.optim.Optimizer): Steps the parameters that the loss depends on.
        settings (Settings): Run options (device, autocast).

    Example:
        >>> net = nn.Linear(4, 2)
        >>> s = Settings(device='cpu', threads=1, amp=False, amp_dtype=None,
        ...              channels_last=False, compile=False, warmup=0, repeat=1, iters=1)
        >>> step = TrainStep(lambda: net(torch.ones(3, 4)).square().mean(),
        ...                  torch.optim.AdamW(net.parameters()), s)
        >>> step(); step.scaler is None, net.weight.grad is None
        (True, True)
    """

    def __init__(self, loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                 settings: Settings) -> None:
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.settings = settings
        self.scaler = (torch.amp.GradScaler(settings.device, init_scale=GRAD_SCALER_INIT)
                       if needs_grad_scaler(settings) else None)
        self.settled_scale = GRAD_SCALER_INIT
        self.last_loss: Optional[torch.Tensor] = None  # kept in one buffer, see __call__

    def __call__(self) -> None:
        with autocast_context(self.settings):
            loss = self.loss_fn()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # skips the step if a gradient overflowed
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Copied into the same tensor every step: replacing it would free, inside the next
        # step, a block allocated before it, which torch.profiler warns about.
        if self.last_loss is None:
            self.last_loss = loss.detach().clone()
        else:
            self.last_loss.copy_(loss.detach())

    def last_loss_value(self) -> Optional[float]:
        """The loss of the latest step as a float (one host sync), None before any step."""
        return None if self.last_loss is None else float(self.last_loss)

    def settle(self, max_steps: int = 24) -> int:
        """Step until the GradScaler stops skipping steps; returns the steps run.

        A GradScaler starts at a loss scale that overflows fp16 gradients and halves it at
        every overflow, skipping that optimizer step; a training run does this in its first
        iterations only. Timing those cheaper steps would misrepresent the run, so they are
        run here, untimed. Without a GradScaler this does nothing.

        Args:
            max_steps (int): Give up after this many (the skips then show in
                :meth:`skipped_steps`). Defaults to 24.
        """
        if self.scaler is None:
            return 0
        for steps in range(1, max_steps + 1):
            before = self.scaler.get_scale()
            self()
            if self.scaler.get_scale() >= before:
                break
        self.settled_scale = self.scaler.get_scale()
        return steps

    def skipped_steps(self) -> int:
        """Optimizer steps the GradScaler skipped since :meth:`settle` (or the start).

        Each overflow halves the scale, and the scale only grows back after 2000 clean
        steps (the GradScaler's growth interval, far more than a benchmark runs), so the
        halvings count the skipped steps. 0 without a GradScaler.
        """
        if self.scaler is None:
            return 0
        return round(math.log2(self.settled_scale / self.scaler.get_scale()))


def settle_all(steps: Dict[str, TrainStep]) -> None:
    """Let every fp16 GradScaler find its scale before timing (see ``TrainStep.settle``)."""
    for step in steps.values():
        try:
            step.settle()
        except (RuntimeError, MemoryError):
            pass  # the timing meets the same error and reports it for this model
