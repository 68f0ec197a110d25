# Copyright (c) dualformer-mm contributors.
"""Norm layers for NCHW feature maps, chosen by ``norm_cfg`` like mmcv's ``build_norm_layer``."""
from typing import Dict, Tuple

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch import Tensor

# Norm types that mean "LayerNorm over the channels" for an NCHW map. mmcv's 'LN' is
# nn.LayerNorm over the last dimension, which for an NCHW tensor is the width.
LAYER_NORM_TYPES = ('LN', 'LN2d')


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (each pixel normalised on its own).

    The map is normalised as the NHWC view ``x.permute(0, 2, 3, 1)``, which is free for the
    channels-last tensors DualFormer runs on, and handed back as NCHW in the same layout.

    Args:
        num_channels (int): Channels ``C``.
        eps (float): Added to the variance. Defaults to 1e-6.

    Example:
        >>> import torch
        >>> norm = LayerNorm2d(8)
        >>> out = norm(torch.rand(2, 8, 5, 7))
        >>> out.shape, bool(out.mean(1).abs().max() < 1e-5)
        (torch.Size([2, 8, 5, 7]), True)
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        # (N, C, H, W) -> (N, H, W, C) -> normalise C -> (N, C, H, W)
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                            self.bias, self.eps).permute(0, 3, 1, 2)


def build_norm2d(norm_cfg: Dict, num_channels: int) -> Tuple[str, nn.Module]:
    """Build the norm of ``norm_cfg`` for NCHW maps of ``num_channels`` channels.

    ``type='LN'`` and ``type='LN2d'`` give :class:`LayerNorm2d` (``eps`` may be set); every
    other type goes to mmcv's ``build_norm_layer`` (BN, SyncBN, GN, CPUSyncBN, ...).

    Args:
        norm_cfg (dict): Norm config with a ``type`` key.
        num_channels (int): Channels of the map.

    Returns:
        tuple[str, nn.Module]: A short name (``'ln'``, ``'bn'``, ``'gn'``, ...) and the layer.

    Example:
        >>> name, layer = build_norm2d(dict(type='LN'), 16)
        >>> name, type(layer).__name__, layer.normalized_shape, layer.eps
        ('ln', 'LayerNorm2d', (16,), 1e-06)
    """
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise TypeError(f'norm_cfg must be a dict with a "type" key, got {norm_cfg!r}')
    if norm_cfg['type'] in LAYER_NORM_TYPES:
        extra = set(norm_cfg) - {'type', 'eps', 'requires_grad'}
        if extra:
            raise ValueError(f'norm_cfg of type {norm_cfg["type"]!r} accepts eps and '
                             f'requires_grad, got {sorted(extra)}')
        layer = LayerNorm2d(num_channels, eps=norm_cfg.get('eps', 1e-6))
        for param in layer.parameters():
            param.requires_grad = norm_cfg.get('requires_grad', True)
        return 'ln', layer
    return build_norm_layer(norm_cfg, num_channels)
