# Copyright (c) dualformer-mm contributors.
"""The block's feed-forward network, and how it runs fast on CPUs without changing its numbers.

:class:`FFN` is the usual transformer FFN written for NCHW maps (1x1 conv, activation, 1x1
conv). On CPU, for channels-last maps, it runs as matrix products over tiles of pixels so that
the wide hidden map never goes through memory in full (:func:`~dualformer_mm.models.layers.ffn_over_tiles`, and
:class:`~dualformer_mm.models.layers.ffn.TiledFFNFunction` with its own tiled backward). ``tests/test_layers.py`` compares
every path with the plain convolutions; ``docs/architecture.md`` ("Memory layout and FFN
tiles") and ``docs/benchmarks.md`` give the measurements behind the thresholds.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer
from mmengine.model import BaseModule
from torch import Tensor

from dualformer_mm import compat

# Hidden activations per FFN tile on CPU: 2 MiB of fp32, which stays in cache.
FFN_TILE_ELEMENTS = 1 << 19


def is_channels_last(x: Tensor) -> bool:
    """Whether the NHWC view of the 4-d map ``x`` is contiguous: its pixels are matrix rows.

    Example:
        >>> x = torch.rand(1, 3, 4, 5)
        >>> is_channels_last(x), is_channels_last(x.contiguous(memory_format=torch.channels_last))
        (False, True)
    """
    return x.dim() == 4 and x.permute(0, 2, 3, 1).is_contiguous()


def ffn_over_tiles(pixels: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                   act: nn.Module, rows: int) -> Tensor:
    """``act(pixels @ w1.T + b1) @ w2.T + b2``, a tile of ``rows`` pixels at a time.

    Args:
        pixels (Tensor): ``(P, C)`` pixel matrix.
        w1 (Tensor): ``(hidden, C)`` first weight.
        b1 (Tensor): ``(hidden,)`` first bias.
        w2 (Tensor): ``(C_out, hidden)`` second weight.
        b2 (Tensor): ``(C_out,)`` second bias.
        act (nn.Module): Activation between the two products.
        rows (int): Pixels per tile.

    Returns:
        Tensor: ``(P, C_out)``.

    Example:
        >>> x, w1, w2 = torch.rand(10, 4), torch.rand(6, 4), torch.rand(3, 6)
        >>> b1, b2 = torch.rand(6), torch.rand(3)
        >>> out = ffn_over_tiles(x, w1, b1, w2, b2, nn.GELU(), rows=3)
        >>> torch.allclose(out, nn.GELU()(x @ w1.T + b1) @ w2.T + b2)
        True
    """
    out = pixels.new_empty(pixels.shape[0], w2.shape[0])
    for start in range(0, pixels.shape[0], rows):
        hidden = act(torch.addmm(b1, pixels[start:start + rows], w1.t()))
        torch.addmm(b2, hidden, w2.t(), out=out[start:start + rows])
    return out


class TiledFFNFunction(torch.autograd.Function):
    """fc1, activation and fc2 over tiles of rows of a pixel matrix, forward and backward.

    Nothing ``hidden``-wide is kept for the backward (autograd keeps two such maps for the
    plain path, the pre-activation and the activation): the backward recomputes each tile's
    pre-activation and activation while the tile is in cache, one extra product with
    ``w1``. The results are those of the plain path up to the order of fp32 additions in the
    weight gradients. Takes the arguments of :func:`~dualformer_mm.models.layers.ffn_over_tiles`.
    """

    @staticmethod
    def forward(ctx, pixels: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                act: nn.Module, rows: int) -> Tensor:
        out = ffn_over_tiles(pixels, w1, b1, w2, b2, act, rows)
        ctx.save_for_backward(pixels, w1, b1, w2)
        ctx.act, ctx.rows = act, rows
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        pixels, w1, b1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad = grad.contiguous()
        grad_x = torch.empty_like(pixels) if need_x else None
        grad_w1 = torch.zeros_like(w1) if need_w1 else None
        grad_w2 = torch.zeros_like(w2) if need_w2 else None
        grad_b1 = torch.zeros_like(b1) if need_b1 else None
        grad_b2 = grad.sum(0) if need_b2 else None
        for start in range(0, pixels.shape[0], ctx.rows):
            stop = start + ctx.rows
            x, g = pixels[start:stop], grad[start:stop]
            with torch.enable_grad():
                h = torch.addmm(b1, x, w1.t()).requires_grad_()
                a = ctx.act(h)
            if need_w2:
                grad_w2.addmm_(g.t(), a.detach())
            grad_h, = torch.autograd.grad(a, h, g @ w2)
            if need_b1:
                grad_b1 += grad_h.sum(0)
            if need_w1:
                grad_w1.addmm_(grad_h.t(), x)
            if need_x:
                torch.mm(grad_h, w1, out=grad_x[start:stop])
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None


class FFN(BaseModule):
    """The block's feed-forward network: 1x1 conv to ``hidden`` channels, activation, 1x1 conv.

    One computation, run per call in one of three ways that give the same numbers
    (``tests/test_layers.py`` compares them):

    * plain: two 1x1 convolutions (cuDNN on GPUs, oneDNN on CPUs);
    * on CPU, for channels-last maps (DualFormer's default layout), matrix products over tiles
      of pixels whose ``hidden``-channel activations stay in cache (about 2 MiB a tile):
      in inference (no autograd), where the full hidden map (115 MB in fp32 for one image in
      DualFormer-S's first stage at 800x1280: 200x320 pixels of 448 channels) never exists;
    * and in training while ``dims`` is at most ``TILED_TRAINING_MAX_DIMS``, with a tiled
      backward (:class:`~dualformer_mm.models.layers.ffn.TiledFFNFunction`) that recomputes each tile's hidden activations
      instead of keeping two hidden maps. With more channels the convolutions' own blocking
      wins.

    CUDA, autocast (which does not reach the tiles' ``out=`` products), tracing (FLOP counting,
    ONNX) and ``torch.compile`` take the plain path.

    Args:
        dims (int): Channels in and out.
        hidden (int): Hidden channels.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> ffn = FFN(16, 64)
        >>> ffn(torch.rand(2, 16, 5, 7)).shape
        torch.Size([2, 16, 5, 7])
        >>> x = torch.rand(2, 16, 5, 7).contiguous(memory_format=torch.channels_last)
        >>> ffn._path(x), ffn._path(x.contiguous())
        ('tiled_training', 'plain')
    """

    # Measured at DualFormer-S's shapes on 2 CPU cores (docs/benchmarks.md): tiles made a
    # training FFN step 1.4-1.7x faster than oneDNN's 1x1 convolutions at 64 channels (hidden
    # 448), 1.3x at 128 (hidden 896), and slower at 320 (hidden 2080).
    TILED_TRAINING_MAX_DIMS = 128

    def __init__(self,
                 dims: int,
                 hidden: int,
                 act_cfg: Dict = dict(type='GELU'),
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.fc1 = nn.Conv2d(dims, hidden, 1)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Conv2d(hidden, dims, 1)

    def _path(self, x: Tensor) -> str:
        """``'tiled'``, ``'tiled_training'`` or ``'plain'`` for this call."""
        if (x.device.type != 'cpu' or compat.is_autocast_enabled('cpu')
                or torch.jit.is_tracing() or compat.is_compiling()
                or not is_channels_last(x)):
            return 'plain'
        if not (torch.is_grad_enabled() and (x.requires_grad or self.fc1.weight.requires_grad)):
            return 'tiled'
        return 'tiled_training' if self.fc1.in_channels <= self.TILED_TRAINING_MAX_DIMS \
            else 'plain'

    def _tiled(self, x: Tensor, training: bool) -> Tensor:
        """The FFN over tiles of pixels of a channels-last map; ``training``: with the tiled
        backward of :class:`~dualformer_mm.models.layers.ffn.TiledFFNFunction`, else without autograd."""
        batch, channels, height, width = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)  # a view in channels-last
        args = (pixels, self.fc1.weight.view(self.fc1.out_channels, channels), self.fc1.bias,
                self.fc2.weight.view(self.fc2.out_channels, self.fc2.in_channels),
                self.fc2.bias, self.act, max(64, FFN_TILE_ELEMENTS // self.fc1.out_channels))
        out = TiledFFNFunction.apply(*args) if training else ffn_over_tiles(*args)
        # (B*H*W, C) -> (B, H, W, C) -> (B, C, H, W), a channels-last view
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        path = self._path(x)
        if path == 'plain':
            return self.fc2(self.act(self.fc1(x)))
        return self._tiled(x, training=path == 'tiled_training')
