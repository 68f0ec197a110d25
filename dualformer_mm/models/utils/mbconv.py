# Copyright (c) dualformer-mm contributors.
"""The convolutions of DualFormer: ``conv_norm_act`` and the local branch ``MBConv``.

``conv_norm_act`` is every conv-norm(-activation) of the model: the stem, the stages'
downsampling, MHPA's depth-wise stride conv and the two convs of
:class:`~dualformer_mm.models.MBConv`, the local branch of the Dual Attention Block
(section 3.3).
"""
from collections import OrderedDict
from typing import Dict, Optional

import torch.nn as nn
from mmcv.cnn import build_activation_layer
from mmengine.model import BaseModule, Sequential
from torch import Tensor

from ..layers import build_norm2d


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  padding: int = 0, groups: int = 1, norm_cfg: Optional[Dict] = None,
                  act_cfg: Optional[Dict] = None) -> Sequential:
    """A conv (no bias when a norm follows), an optional norm and an optional activation.

    The children are named ``conv``, ``norm`` and ``act`` (state dict keys such as
    ``stem.0.conv.weight``).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Square kernel size.
        stride (int): Stride. Defaults to 1.
        padding (int): Zero padding. Defaults to 0.
        groups (int): Conv groups (``in_channels`` for a depth-wise conv). Defaults to 1.
        norm_cfg (dict, optional): Norm config (see
            :func:`~dualformer_mm.models.layers.build_norm2d`). Defaults to None.
        act_cfg (dict, optional): Activation config. Defaults to None.

    Returns:
        Sequential: The layers.

    Example:
        >>> layer = conv_norm_act(3, 8, 3, stride=2, padding=1, norm_cfg=dict(type='BN'),
        ...                       act_cfg=dict(type='GELU'))
        >>> list(dict(layer.named_children()))
        ['conv', 'norm', 'act']
        >>> layer(torch.rand(1, 3, 9, 9)).shape
        torch.Size([1, 8, 5, 5])
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     groups=groups, bias=norm_cfg is None)
    layers = OrderedDict(conv=conv)
    if norm_cfg is not None:
        layers['norm'] = build_norm2d(norm_cfg, out_channels)[1]
    if act_cfg is not None:
        layers['act'] = build_activation_layer(act_cfg)
    return Sequential(layers)


class MBConv(BaseModule):
    """Local branch of the Dual Attention Block: 1x1 conv then depth-wise 3x3 conv.

    Args:
        dims (int): Channels in and out.
        use_dwconv (bool): Keep the depth-wise conv; without it the branch is the 1x1 conv
            alone (``block_cfg=dict(local_branch='pointwise')``). Defaults to True.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> MBConv(32)(torch.rand(1, 32, 7, 9)).shape
        torch.Size([1, 32, 7, 9])
    """

    def __init__(self,
                 dims: int,
                 use_dwconv: bool = True,
                 norm_cfg: Dict = dict(type='BN'),
                 act_cfg: Dict = dict(type='GELU'),
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        layers = [conv_norm_act(dims, dims, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)]
        if use_dwconv:
            layers.append(conv_norm_act(dims, dims, 3, padding=1, groups=dims,
                                        norm_cfg=norm_cfg, act_cfg=act_cfg))
        self.layers = Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

