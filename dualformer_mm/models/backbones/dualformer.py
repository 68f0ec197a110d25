# Copyright (c) dualformer-mm contributors.
"""DualFormer backbone.

Implements "Dual Path Transformer with Partition Attention" (DualFormer):
section 3.1 (overall architecture, Table 1 sizes), section 3.2 (Multi-Head Partition
Attention: partition generator, intra- and inter-partition attention, global-to-local
aggregation, channel to spatial) and section 3.3 (the Dual Attention Block). Where the
paper is ambiguous, the choices are written in ``docs/architecture.md``.

One copy of the model serves mmpretrain, mmdet and mmseg: it is registered in mmengine's
root ``MODELS`` registry, which the three toolboxes' registries search.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.registry import MODELS
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from dualformer_mm import ops

PARTITION_METHODS = ('lsh', 'kmeans')
# TruncNormal for convs and linears, identity norms (as ConvNeXt and Swin initialise).
DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    dict(type='Constant', layer=['_BatchNorm', 'GroupNorm', 'LayerNorm'], val=1., bias=0.),
]
BLOCK_MODES = ('parallel', 'serial')
# Hidden activations per FFN tile in inference on CPU: 2 MiB of fp32, which stays in cache.
FFN_TILE_ELEMENTS = 1 << 19


class PartitionAttention(BaseModule):
    """Multi-Head Partition Attention (MHPA), section 3.2.

    Depth-wise stride-``k`` downsampling, a partition generator per head (LSH by random
    hyperplanes, or K-Means), intra-partition attention (softmax pooling of each partition
    into a proxy feature), inter-partition attention (mean partition descriptors weighted by
    SE-style importance normalised over partitions), global-to-local aggregation (scatter
    back, concatenate, 1x1 conv) and channel-to-spatial recovery (1x1 conv to ``C*k*k``
    channels, pixel shuffle) with a skip connection.

    Args:
        dims (int): Channels in and out.
        num_heads (int): Heads; each head partitions its own ``dims // num_heads`` channels.
        num_partitions (int): Partitions per head. A power of two for LSH. Defaults to 8.
        sr_ratio (int): Downsampling rate ``k`` of the depth-wise stride conv. Defaults to 1.
        partition (str): ``'lsh'`` or ``'kmeans'``. Defaults to ``'lsh'``.
        use_intra (bool): Use intra-partition attention. Defaults to True.
        use_inter (bool): Use inter-partition attention. Defaults to True.
        kmeans_iters (int): Lloyd iterations of the K-Means generator. Defaults to 3.
        norm_cfg (dict): Norm after the downsampling conv. Defaults to ``dict(type='BN')``.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> attn = PartitionAttention(dims=64, num_heads=2, num_partitions=8, sr_ratio=2)
        >>> attn(torch.rand(2, 64, 15, 17)).shape
        torch.Size([2, 64, 15, 17])
    """

    def __init__(self,
                 dims: int,
                 num_heads: int,
                 num_partitions: int = 8,
                 sr_ratio: int = 1,
                 partition: str = 'lsh',
                 use_intra: bool = True,
                 use_inter: bool = True,
                 kmeans_iters: int = 3,
                 norm_cfg: Dict = dict(type='BN'),
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if dims % num_heads != 0:
            raise ValueError(f'dims ({dims}) must be divisible by num_heads ({num_heads})')
        if partition not in PARTITION_METHODS:
            raise ValueError(f'partition must be one of {PARTITION_METHODS}, got {partition!r}')
        if not (use_intra or use_inter):
            raise ValueError('at least one of use_intra and use_inter must be True')
        if partition == 'lsh' and (num_partitions < 2 or num_partitions & (num_partitions - 1)):
            raise ValueError('num_partitions must be a power of two >= 2 for LSH, '
                             f'got {num_partitions}')
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio must be >= 1, got {sr_ratio}')
        self.dims = dims
        self.num_heads = num_heads
        self.head_dims = dims // num_heads
        self.num_partitions = num_partitions
        self.sr_ratio = sr_ratio
        self.partition = partition
        self.use_intra = use_intra
        self.use_inter = use_inter
        self.kmeans_iters = kmeans_iters

        if sr_ratio > 1:
            self.down = ConvModule(
                dims, dims, sr_ratio, stride=sr_ratio, groups=dims, norm_cfg=norm_cfg,
                act_cfg=None)
        else:
            self.down = nn.Identity()
        # The "lightweight linear layer" that gives the transformed features x~ (eq. 7).
        self.value = nn.Linear(dims, dims)
        if partition == 'lsh':
            # Planes are buffers, not parameters: saved in checkpoints, so a loaded model
            # reproduces its partitions, and never trained (eq. 4 uses pre-defined normals).
            bits = int(math.log2(num_partitions))
            self.register_buffer('planes', torch.randn(num_heads, self.head_dims, bits))
        if use_inter:
            hidden = max(self.head_dims // 4, 8)
            # SE-style importance coefficient of each partition from its descriptor (eq. 9).
            self.importance = nn.Sequential(
                nn.Linear(self.head_dims, hidden), nn.GELU(), nn.Linear(hidden, 1))
        num_paths = int(use_intra) + int(use_inter)
        self.aggregate = nn.Linear(num_paths * dims, dims)
        self.to_spatial = nn.Conv2d(dims, dims * sr_ratio * sr_ratio, 1)
        # The fused ops' extension is imported here, not on the first forward, where
        # torch.compile would trace the import and the backend state it sets.
        ops.prepare_backend()

    def partition_codes(self, tokens: Tensor) -> Tensor:
        """Partition code of every token and head: (B, heads, n, d) -> (B, heads, n)."""
        with torch.no_grad():
            if self.partition == 'lsh':
                return ops.lsh_hash(tokens, self.planes)
            batch, heads, n, d = tokens.shape
            codes = ops.kmeans_assign(
                tokens.reshape(batch * heads, n, d), self.num_partitions, self.kmeans_iters)
            return codes.view(batch, heads, n)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        k = self.sr_ratio
        pad_h, pad_w = (-height) % k, (-width) % k
        z = self.down(F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x)
        h, w = z.shape[-2:]
        n = h * w
        tokens = z.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, n, C)
        values = self.value(tokens)
        heads, d = self.num_heads, self.head_dims
        # (B, n, C) -> (B, heads, n, d): each head partitions its own channels.
        tokens = tokens.view(batch, n, heads, d).transpose(1, 2)
        values = values.view(batch, n, heads, d).transpose(1, 2)
        codes = self.partition_codes(tokens).reshape(batch * heads, n)
        tokens = tokens.reshape(batch * heads, n, d)
        values = values.reshape(batch * heads, n, d)

        pooled: List[Tensor] = []
        if self.use_intra:
            # Eqs. 6-7: per-channel softmax of the input over the partition weights the
            # transformed features into one proxy feature per partition.
            pooled.append(ops.partition_softmax_pool(tokens, values, codes, self.num_partitions))
        if self.use_inter:
            # Eqs. 8-9: mean descriptors, importance normalised over non-empty partitions.
            desc, counts = ops.partition_mean(values, codes, self.num_partitions)
            importance = torch.sigmoid(self.importance(desc).squeeze(-1))
            importance = importance * (counts > 0).to(importance.dtype)
            importance = importance / importance.sum(-1, keepdim=True).clamp(min=1e-6)
            pooled.append(desc * importance.unsqueeze(-1))
        # Global to local: both paths' partition features go back to the tokens in one
        # gather. Concatenating the (G, K, d) pooled features first is exactly the
        # concatenation of the two gathered (G, n, d) maps, with K << n rows to copy.
        y = ops.partition_distribute(torch.cat(pooled, dim=-1) if len(pooled) > 1 else pooled[0],
                                     codes)
        # (B*heads, n, paths*d) -> (B, n, heads*paths*d)
        y = y.view(batch, heads, n, -1).transpose(1, 2).reshape(batch, n, -1)
        y = self.aggregate(y).transpose(1, 2).reshape(batch, channels, h, w)
        # Channel to spatial: (B, C, h, w) -> (B, C*k*k, h, w) -> (B, C, h*k, w*k).
        y = self.to_spatial(y)
        if k > 1:
            y = F.pixel_shuffle(y, k)[:, :, :height, :width]
        return x + y


class MBConv(BaseModule):
    """Local branch of the Dual Attention Block: 1x1 conv then depth-wise 3x3 conv.

    Args:
        dims (int): Channels in and out.
        use_dwconv (bool): Keep the depth-wise conv (Table 5 "Depth-wise"). Defaults to True.
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
        layers = [ConvModule(dims, dims, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)]
        if use_dwconv:
            layers.append(
                ConvModule(dims, dims, 3, padding=1, groups=dims, norm_cfg=norm_cfg,
                           act_cfg=act_cfg))
        self.layers = Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DualAttentionBlock(BaseModule):
    """Dual Attention Block, section 3.3.

    ``x = x + DropPath(Proj(Mix(Norm(x))))`` then ``x = x + DropPath(FFN(Norm(x)))``. In the
    default ``'parallel'`` mode, Mix splits the channels, runs MBConv on one part and MHPA on
    the other, and concatenates them; ``'serial'`` runs MBConv then MHPA on all channels
    (the serial row of Table 5).

    Args:
        dims (int): Channels.
        num_heads (int): MHPA heads.
        mlp_ratio (float): FFN hidden width over ``dims``.
        sr_ratio (int): MHPA downsampling rate ``k``.
        num_partitions (int): Partitions per head.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        mode (str): ``'parallel'`` or ``'serial'``. Defaults to ``'parallel'``.
        conv_ratio (float): Share of channels for MBConv in parallel mode. Defaults to 0.5.
        use_dwconv (bool): Depth-wise conv in MBConv. Defaults to True.
        use_intra (bool): Intra-partition attention. Defaults to True.
        use_inter (bool): Inter-partition attention. Defaults to True.
        partition (str): ``'lsh'`` or ``'kmeans'``. Defaults to ``'lsh'``.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        with_cp (bool): Gradient checkpointing. Defaults to False.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> block = DualAttentionBlock(64, num_heads=1, mlp_ratio=2, sr_ratio=2,
        ...                            num_partitions=4)
        >>> block(torch.rand(2, 64, 9, 11)).shape
        torch.Size([2, 64, 9, 11])
    """

    def __init__(self,
                 dims: int,
                 num_heads: int,
                 mlp_ratio: float,
                 sr_ratio: int,
                 num_partitions: int,
                 drop_path: float = 0.,
                 mode: str = 'parallel',
                 conv_ratio: float = 0.5,
                 use_dwconv: bool = True,
                 use_intra: bool = True,
                 use_inter: bool = True,
                 partition: str = 'lsh',
                 norm_cfg: Dict = dict(type='BN'),
                 act_cfg: Dict = dict(type='GELU'),
                 with_cp: bool = False,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if mode not in BLOCK_MODES:
            raise ValueError(f'mode must be one of {BLOCK_MODES}, got {mode!r}')
        self.mode = mode
        self.with_cp = with_cp
        if mode == 'parallel':
            conv_dims = int(round(dims * conv_ratio))
            if not 0 < conv_dims < dims:
                raise ValueError(f'conv_ratio must leave channels for both paths, got {conv_ratio}')
            attn_dims = dims - conv_dims
        else:
            conv_dims = attn_dims = dims
        self.split = (conv_dims, attn_dims)
        self.norm1 = build_norm_layer(norm_cfg, dims)[1]
        self.conv = MBConv(conv_dims, use_dwconv, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.attn = PartitionAttention(
            attn_dims, num_heads, num_partitions=num_partitions, sr_ratio=sr_ratio,
            partition=partition, use_intra=use_intra, use_inter=use_inter, norm_cfg=norm_cfg)
        self.proj = nn.Conv2d(dims, dims, 1)
        self.norm2 = build_norm_layer(norm_cfg, dims)[1]
        hidden = int(dims * mlp_ratio)
        self.ffn = Sequential(
            nn.Conv2d(dims, hidden, 1), build_activation_layer(act_cfg), nn.Conv2d(hidden, dims, 1))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        if self.mode == 'parallel':
            local, glob = torch.split(y, self.split, dim=1)
            y = torch.cat([self.conv(local), self.attn(glob)], dim=1)
        else:
            y = self.attn(self.conv(y))
        x = x + self.drop_path(self.proj(y))
        y = self.norm2(x)
        return x + self.drop_path(self._tiled_ffn(y) if self._tiled_ffn_applies(y) else self.ffn(y))

    def _tiled_ffn_applies(self, x: Tensor) -> bool:
        """Whether this call is CPU inference, where the FFN may run in tiles."""
        # Autocast does not reach the out= matmul of the tiles, so it keeps the plain path.
        return (x.device.type == 'cpu' and not self.training
                and not torch.is_autocast_enabled('cpu')
                and not (torch.is_grad_enabled()
                         and (x.requires_grad or self.ffn[0].weight.requires_grad))
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
                and x.is_contiguous(memory_format=torch.channels_last))

    def _tiled_ffn(self, x: Tensor) -> Tensor:
        """The FFN over tiles of pixels, for CPU inference."""
        # The hidden map is mlp_ratio times wider than the input (131 MB for DualFormer-S's
        # first stage at 800x1280). Tiles of pixels keep it in cache instead of writing and
        # reading it back through memory, with the 1x1 convs written as matmuls over the NHWC
        # pixels: that FFN takes 60 ms instead of 164 ms on 2 cores, with no large allocation.
        expand, act, shrink = self.ffn
        batch, channels, height, width = x.shape
        hidden = expand.out_channels
        pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)  # a view in channels-last
        out = pixels.new_empty(pixels.shape[0], shrink.out_channels)
        w_expand = expand.weight.view(hidden, channels)
        w_shrink_t = shrink.weight.view(shrink.out_channels, hidden).t()
        rows = max(64, FFN_TILE_ELEMENTS // hidden)
        for start in range(0, pixels.shape[0], rows):
            tile = act(F.linear(pixels[start:start + rows], w_expand, expand.bias))
            torch.addmm(shrink.bias, tile, w_shrink_t, out=out[start:start + rows])
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class DualFormerStage(BaseModule):
    """A downsampling patch embedding (3x3 stride-2 conv) and a sequence of blocks.

    Args:
        in_channels (int): Channels of the previous stage (ignored when ``downsample``
            is False).
        dims (int): Channels of this stage.
        depth (int): Number of Dual Attention Blocks.
        downsample (bool): Halve the resolution first (all stages but the first).
        drop_paths (Sequence[float]): Stochastic depth rate of each block.
        norm_cfg (dict): Norm config.
        block_cfg (dict): Keyword arguments of :class:`DualAttentionBlock`.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> stage = DualFormerStage(32, 64, depth=2, downsample=True, drop_paths=[0., 0.1],
        ...     block_cfg=dict(num_heads=1, mlp_ratio=2, sr_ratio=2, num_partitions=4))
        >>> stage(torch.rand(1, 32, 15, 15)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(self,
                 in_channels: int,
                 dims: int,
                 depth: int,
                 downsample: bool,
                 drop_paths: Sequence[float],
                 norm_cfg: Dict = dict(type='BN'),
                 block_cfg: Dict = dict(),
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if downsample:
            self.downsample = ConvModule(
                in_channels, dims, 3, stride=2, padding=1, norm_cfg=norm_cfg, act_cfg=None)
        else:
            self.downsample = nn.Identity()
        self.blocks = ModuleList([
            DualAttentionBlock(dims, drop_path=drop_paths[i], norm_cfg=norm_cfg, **block_cfg)
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


@MODELS.register_module()
class DualFormer(BaseModule):
    """DualFormer backbone (Dual Path Transformer with Partition Attention).

    A two-conv stem to stride 4, then four stages of Dual Attention Blocks at strides 4, 8,
    16 and 32 (section 3.1). Sizes follow Table 1 of the paper.

    Args:
        arch (str | dict): ``'t'``/``'tiny'``, ``'xs'``/``'xsmall'``, ``'s'``/``'small'``,
            ``'b'``/``'base'``, or a dict with the keys of :attr:`arch_settings_keys`:
            ``depths``, ``channels``, ``num_heads`` and ``mlp_ratios`` (4 values each).
            Defaults to ``'t'``.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int]): Stages whose output is returned, in 0..3 (negative
            indices count from the end). Defaults to ``(0, 1, 2, 3)``.
        frozen_stages (int): Stem frozen when >= 0, and stages ``0..frozen_stages-1`` with
            their output norms. -1 freezes nothing. Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training. Defaults to
            False.
        with_cp (bool): Gradient checkpointing of each block. Defaults to False.
        drop_path_rate (float): Stochastic depth rate, linearly increasing over blocks.
            Defaults to 0.1.
        sr_ratios (Sequence[int]): MHPA downsampling rate ``k`` per stage. Defaults to
            ``(4, 2, 1, 1)``.
        num_partitions (Sequence[int]): Partitions per head, per stage. Defaults to
            ``(8, 8, 8, 8)``.
        mode (str): ``'parallel'`` (the paper's dual path) or ``'serial'`` (Table 5).
        conv_ratio (float): Share of channels for the MBConv path. Defaults to 0.5.
        use_dwconv (bool): Depth-wise conv in the MBConv path (Table 5). Defaults to True.
        use_intra (bool): Intra-partition attention (Table 5). Defaults to True.
        use_inter (bool): Inter-partition attention (Table 5). Defaults to True.
        partition (str): Partition generator, ``'lsh'`` or ``'kmeans'`` (Table 6).
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        channels_last (bool): Run the network in the channels-last (NHWC) memory layout:
            the input is converted once, every layer keeps the layout, and the outputs are
            converted back to contiguous NCHW (one copy each). oneDNN and cuDNN run the 1x1 and
            depth-wise convolutions that dominate DualFormer faster in this layout (3.4 s ->
            1.8 s of convolution time for DualFormer-S at 224x224 batch 32 on a 2-core CPU,
            see docs/benchmarks.md), and MHPA's token views become free. The numbers
            computed are the same. Defaults to True.
        init_cfg (dict | list[dict], optional): Initialization config; use
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` to load the
            backbone of a classifier checkpoint. A Pretrained init with ``checkpoint=None``
            falls back to the default init with a warning.

    Example:
        >>> from mmengine.registry import MODELS
        >>> import dualformer_mm  # registers DualFormer
        >>> model = MODELS.build(dict(type='DualFormer', arch='tiny'))
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 225, 301))]
        [(1, 64, 57, 76), (1, 128, 29, 38), (1, 256, 15, 19), (1, 320, 8, 10)]
    """

    arch_settings_keys = {'depths', 'channels', 'num_heads', 'mlp_ratios'}
    # Depths and channels from Table 1; heads and MLP ratios chosen so that parameters and
    # FLOPs at 224x224 with a 1000-class head match Table 1 (see docs/architecture.md).
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], {
            'depths': [2, 2, 4, 2],
            'channels': [64, 128, 256, 320],
            'num_heads': [1, 2, 4, 5],
            'mlp_ratios': [5, 4.5, 3, 2],
        }),
        **dict.fromkeys(['xs', 'xsmall'], {
            'depths': [2, 2, 4, 2],
            'channels': [64, 128, 320, 368],
            'num_heads': [1, 2, 5, 8],
            'mlp_ratios': [7, 7, 6, 2.5],
        }),
        **dict.fromkeys(['s', 'small'], {
            'depths': [4, 4, 7, 3],
            'channels': [64, 128, 320, 512],
            'num_heads': [1, 2, 5, 8],
            'mlp_ratios': [8, 7, 6, 4],
        }),
        **dict.fromkeys(['b', 'base'], {
            'depths': [6, 12, 25, 7],
            'channels': [64, 128, 368, 560],
            'num_heads': [1, 2, 8, 8],
            'mlp_ratios': [8, 8, 7, 1.5],
        }),
    }
    num_stages = 4

    def __init__(self,
                 arch: Union[str, Dict] = 't',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.1,
                 sr_ratios: Sequence[int] = (4, 2, 1, 1),
                 num_partitions: Sequence[int] = (8, 8, 8, 8),
                 mode: str = 'parallel',
                 conv_ratio: float = 0.5,
                 use_dwconv: bool = True,
                 use_intra: bool = True,
                 use_inter: bool = True,
                 partition: str = 'lsh',
                 norm_cfg: Dict = dict(type='BN'),
                 act_cfg: Dict = dict(type='GELU'),
                 channels_last: bool = True,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = DEFAULT_INIT_CFG) -> None:
        if (isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'
                and init_cfg.get('checkpoint') is None):
            # The detection/segmentation configs name a Pretrained init whose checkpoint users
            # set; unset, mmengine would crash on None. Train from scratch, but say so loudly.
            print_log('DualFormer: init_cfg is Pretrained with checkpoint=None, so no ImageNet '
                      'weights are loaded and the backbone trains from scratch (not the paper\'s '
                      'recipe). Set it with --cfg-options '
                      'model.backbone.init_cfg.checkpoint=PATH', logger='current',
                      level=logging.WARNING)
            init_cfg = DEFAULT_INIT_CFG
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        depths = self.arch_settings['depths']
        channels = self.arch_settings['channels']
        for name, value in (('sr_ratios', sr_ratios), ('num_partitions', num_partitions)):
            if len(value) != self.num_stages:
                raise ValueError(f'{name} needs {self.num_stages} values, got {list(value)}')
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices)
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in -1..{self.num_stages}, got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.channels_last = channels_last
        self.channels = list(channels)

        self.stem = Sequential(
            ConvModule(in_channels, channels[0] // 2, 3, stride=2, padding=1,
                       norm_cfg=norm_cfg, act_cfg=act_cfg),
            ConvModule(channels[0] // 2, channels[0], 3, stride=2, padding=1,
                       norm_cfg=norm_cfg, act_cfg=None))

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = ModuleList()
        for i in range(self.num_stages):
            start = sum(depths[:i])
            block_cfg = dict(
                num_heads=self.arch_settings['num_heads'][i],
                mlp_ratio=self.arch_settings['mlp_ratios'][i],
                sr_ratio=sr_ratios[i],
                num_partitions=num_partitions[i],
                mode=mode,
                conv_ratio=conv_ratio,
                use_dwconv=use_dwconv,
                use_intra=use_intra,
                use_inter=use_inter,
                partition=partition,
                act_cfg=act_cfg,
                with_cp=with_cp)
            self.stages.append(
                DualFormerStage(
                    channels[i - 1] if i else channels[0], channels[i], depths[i],
                    downsample=i > 0, drop_paths=rates[start:start + depths[i]],
                    norm_cfg=norm_cfg, block_cfg=block_cfg))
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, channels[i])[1])
        if channels_last:
            # Conv weights in the same layout as the activations, or every strided conv
            # re-lays its weight out on each call.
            self.to(memory_format=torch.channels_last)
        self._freeze_stages()

    def _parse_arch(self, arch: Union[str, Dict]) -> Dict:
        """Look an arch name up in :attr:`arch_zoo`, or validate a custom dict."""
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_zoo:
                raise ValueError(f'Unknown arch {arch!r}; valid names are '
                                 f'{sorted(self.arch_zoo)} or a dict with keys '
                                 f'{sorted(self.arch_settings_keys)}')
            return {k: list(v) for k, v in self.arch_zoo[key].items()}
        if not isinstance(arch, dict) or set(arch) != self.arch_settings_keys:
            got = sorted(arch) if isinstance(arch, dict) else type(arch).__name__
            raise ValueError(f'A custom arch must be a dict with exactly the keys '
                             f'{sorted(self.arch_settings_keys)}, got {got}')
        for key in sorted(self.arch_settings_keys):
            if len(arch[key]) != self.num_stages:
                raise ValueError(f'arch[{key!r}] needs {self.num_stages} values, '
                                 f'got {list(arch[key])}')
        return {k: list(v) for k, v in arch.items()}

    def _parse_out_indices(self, out_indices: Union[int, Sequence[int]]) -> Tuple[int, ...]:
        """Normalise out_indices to sorted, non-negative stage indices."""
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(f'out_indices must be in -{self.num_stages}..'
                                 f'{self.num_stages - 1}, got {list(out_indices)}')
            parsed.append(index % self.num_stages)
        if not parsed:
            raise ValueError('out_indices must name at least one stage')
        return tuple(sorted(set(parsed)))

    def _freeze_stages(self) -> None:
        """Put the frozen stem, stages and their output norms in eval, without grads."""
        if self.frozen_stages < 0:
            return
        frozen = [self.stem] + [self.stages[i] for i in range(self.frozen_stages)]
        frozen += [getattr(self, f'norm{i}') for i in range(self.frozen_stages)
                   if i in self.out_indices]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'DualFormer':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def _check_batch_statistics(self, x: Tensor) -> None:
        """Name the cause when per-process BatchNorm would see one value per channel."""
        # Every strided conv halves with rounding up, so the last stage is ceil(H/32) x
        # ceil(W/32). With one such value per channel, BatchNorm fails deep inside with
        # "Expected more than 1 value per channel"; synchronised variants pool processes.
        last = math.ceil(x.shape[2] / 32) * math.ceil(x.shape[3] / 32)
        if not self.training or x.shape[0] * last > 1:
            return
        if any(type(m) in (nn.BatchNorm2d, nn.BatchNorm1d) and m.training
               for m in self.modules()):
            raise ValueError(
                f'DualFormer: a batch of {x.shape[0]} image of {x.shape[2]}x{x.shape[3]} gives a '
                '1x1 map at stage 4 (stride 32), from which BatchNorm cannot compute training '
                'statistics. Accepted: a batch of at least 2 (per process), images larger than '
                "32x32 pixels, norm_eval=True, or a norm_cfg without batch statistics (e.g. "
                "dict(type='GN', num_groups=1))")

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'DualFormer expects input of shape (N, {self.in_channels}, H, W), '
                             f'got {tuple(x.shape)}')
        # NaN/Inf would otherwise come out as NaN features with no hint of the cause. One
        # reduction and host sync per eager forward, negligible next to the backbone; skipped
        # when tracing (FLOP counting, ONNX) or compiling, where it would break the graph.
        if (not torch.jit.is_tracing() and not torch.compiler.is_compiling()
                and not bool(torch.isfinite(x).all())):
            raise ValueError('DualFormer input contains NaN or Inf values; check the data '
                             'pipeline and normalisation')
        self._check_batch_statistics(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                # Back to contiguous NCHW: some consumers read raw NCHW memory regardless of
                # strides (mmcv's CPU RoIAlign did, and Mask R-CNN's box AP fell to ~0).
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
        return tuple(outs)
