# Copyright (c) dualformer-mm contributors.
"""DualFormer backbone.

Implements "Dual Path Transformer with Partition Attention" (DualFormer):
section 3.1 (overall architecture, Table 1 sizes), section 3.2 (Multi-Head Partition
Attention: partition generator, intra- and inter-partition attention, global-to-local
aggregation, channel to spatial) and section 3.3 (the Dual Attention Block). Where the
paper is ambiguous, the choices are written in ``docs/architecture.md``; the options that
switch between readings and the ablations of Tables 5 and 6 are the fields of
:class:`BlockConfig` and :class:`AttentionConfig`.

One copy of the model serves mmpretrain, mmdet and mmseg: it is registered in mmengine's
root ``MODELS`` registry, which the three toolboxes' registries search.
"""
import dataclasses
import logging
import math
from collections import OrderedDict
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.registry import MODELS
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from dualformer_mm import compat, ops
from ..layers import FFN, build_norm2d, checkpoint_keeping_statistics

# TruncNormal(0.02) for every conv and linear, identity norms, as ConvNeXt and Swin
# initialise; the convs are plain nn.Conv2d (no mmcv ConvModule, whose own init_weights would
# replace this with Kaiming after the parent's init_cfg has run).
DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    dict(type='Constant', layer=['_BatchNorm', 'GroupNorm', 'LayerNorm'], val=1., bias=0.),
]
NAN_INPUT_MESSAGE = ('DualFormer input contains NaN or Inf values; check the data pipeline '
                     'and normalisation')


class _OptionConfig:
    """Base of the option dataclasses: built from a partial dict, checked in one place."""

    # The argument name users write (``'attn_cfg'``) and the accepted values of each option
    # that takes one of a few names.
    arg_name: ClassVar[str] = ''
    choices: ClassVar[Dict[str, Tuple[str, ...]]] = {}

    @classmethod
    def build(cls, cfg: Union[None, Mapping[str, Any], '_OptionConfig']) -> Any:
        """The config of ``cfg``: None gives the defaults, a dict overrides some of them."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f'{cls.arg_name} must be a dict or {cls.__name__}, '
                            f'got {type(cfg).__name__}')
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(accepted))
        if unknown:
            raise ValueError(f'{cls.arg_name} has no option {", ".join(map(repr, unknown))}; '
                             f'the options are {accepted}')
        return cls(**cfg)

    def _check_choices(self) -> None:
        for name, accepted in self.choices.items():
            value = getattr(self, name)
            if value not in accepted:
                raise ValueError(f'{self.arg_name}[{name!r}] must be one of {accepted}, '
                                 f'got {value!r}')

    def _check_bool(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f'{self.arg_name}[{name!r}] must be True or False, '
                                 f'got {value!r}')


@dataclasses.dataclass(frozen=True)
class AttentionConfig(_OptionConfig):
    """Options of Multi-Head Partition Attention, the same in every block (section 3.2).

    Given to :class:`DualFormer` as ``attn_cfg=dict(...)`` (any subset of the fields) and
    passed down whole to every :class:`PartitionAttention`. ``docs/architecture.md`` quotes
    the paper for each reading.

    Attributes:
        partition (str): Partition generator: ``'lsh'``, random hyperplanes (eqs. 4-5), or
            ``'kmeans'`` (Table 6). Defaults to ``'lsh'``.
        kmeans_iters (int): Lloyd iterations of ``'kmeans'``. Defaults to 3.
        intra (str): Reading of intra-partition attention (eqs. 6-7): ``'pool'``, one
            softmax-pooled proxy feature per partition scattered back to its tokens, or
            ``'token'``, each token's transformed feature scaled by its softmax weight.
            Defaults to ``'pool'``.
        use_intra (bool): Intra-partition attention (Table 5 "Intra"). Defaults to True.
        use_inter (bool): Inter-partition attention (Table 5 "Inter"). Defaults to True.
        inter_importance (str): Reading of the importance coefficients of eq. 9:
            ``'partition'``, each partition's coefficient from its own descriptor by an MLP
            shared by the partitions, or ``'joint'``, all coefficients of a head from all its
            descriptors at once (SENet's excitation). Defaults to ``'partition'``.

    Example:
        >>> AttentionConfig.build(dict(intra='token'))
        AttentionConfig(partition='lsh', kmeans_iters=3, intra='token', use_intra=True, \
use_inter=True, inter_importance='partition')
    """

    arg_name: ClassVar[str] = 'attn_cfg'
    choices: ClassVar[Dict[str, Tuple[str, ...]]] = {
        'partition': ('lsh', 'kmeans'),
        'intra': ('pool', 'token'),
        'inter_importance': ('partition', 'joint'),
    }

    partition: str = 'lsh'
    kmeans_iters: int = 3
    intra: str = 'pool'
    use_intra: bool = True
    use_inter: bool = True
    inter_importance: str = 'partition'

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_bool('use_intra', 'use_inter')
        if not (self.use_intra or self.use_inter):
            raise ValueError(f"{self.arg_name}: at least one of 'use_intra' and 'use_inter' "
                             'must be True')
        if isinstance(self.kmeans_iters, bool) or not isinstance(self.kmeans_iters, int) \
                or self.kmeans_iters < 1:
            raise ValueError(f"{self.arg_name}['kmeans_iters'] must be an int >= 1, "
                             f'got {self.kmeans_iters!r}')


@dataclasses.dataclass(frozen=True)
class BlockConfig(_OptionConfig):
    """Options of the Dual Attention Block, the same in every block (section 3.3).

    Given to :class:`DualFormer` as ``block_cfg=dict(...)`` (any subset of the fields) and
    passed down whole to every :class:`DualAttentionBlock`.

    Attributes:
        mode (str): ``'parallel'``, the paper's dual path (the channels split between the
            local branch and MHPA), or ``'serial'``, the local branch then MHPA on all
            channels (Table 5 "Parallel"). Defaults to ``'parallel'``.
        conv_ratio (float): Share of the channels given to the local branch in parallel
            mode. Defaults to 0.5.
        local_branch (str): The convolution branch (Table 5 "Depth-wise"): ``'mbconv'``, a
            1x1 conv then a depth-wise 3x3 conv; ``'pointwise'``, the 1x1 conv alone; or
            ``'none'``, no convolution branch: MHPA takes all channels, in either mode (so
            ``mode`` and ``conv_ratio`` make no difference). Defaults to ``'mbconv'``.

    Example:
        >>> BlockConfig.build(dict(mode='serial'))
        BlockConfig(mode='serial', conv_ratio=0.5, local_branch='mbconv')
    """

    arg_name: ClassVar[str] = 'block_cfg'
    choices: ClassVar[Dict[str, Tuple[str, ...]]] = {
        'mode': ('parallel', 'serial'),
        'local_branch': ('mbconv', 'pointwise', 'none'),
    }

    mode: str = 'parallel'
    conv_ratio: float = 0.5
    local_branch: str = 'mbconv'

    def __post_init__(self) -> None:
        self._check_choices()
        if isinstance(self.conv_ratio, bool) or not isinstance(self.conv_ratio, (int, float)) \
                or not 0 < self.conv_ratio < 1:
            raise ValueError(f"{self.arg_name}['conv_ratio'] must be a number in (0, 1), "
                             f'got {self.conv_ratio!r}')


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
        norm_cfg (dict, optional): Norm config (see :func:`build_norm2d`). Defaults to None.
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


class PartitionAttention(BaseModule):
    """Multi-Head Partition Attention (MHPA), section 3.2.

    Depth-wise stride-``k`` downsampling, a partition generator per head (LSH by random
    hyperplanes, or K-Means), intra-partition attention (eqs. 6-7), inter-partition attention
    (mean partition descriptors weighted by SE-style importance normalised over partitions,
    eqs. 8-9), global-to-local aggregation (scatter back, concatenate, linear) and, when
    ``k > 1``, channel-to-spatial recovery (1x1 conv to ``C*k*k`` channels, pixel shuffle),
    with a skip connection. At ``k = 1`` nothing was downsampled and the aggregation's output
    is used as it is.

    The readings of the paper's equations are options of ``attn_cfg``
    (:class:`AttentionConfig`); ``docs/architecture.md`` quotes the equations:

    * ``intra='pool'``: the softmax weights of eq. 6 pool each partition's transformed
      features into one proxy feature, which is scattered back to the partition's tokens
      with the inter-partition feature. ``intra='token'``: each token keeps its own
      transformed feature scaled by its softmax weight within its partition,
      ``x_i^intra = w_i * x~_i`` (eq. 7 per token); only the inter-partition feature is
      scattered back.
    * ``inter_importance='partition'``: ``m_k = sigmoid(MLP(g_k))`` from partition ``k``'s
      own descriptor. ``inter_importance='joint'``: ``m = sigmoid(MLP([g_1, ..., g_K]))``,
      every coefficient of a head from all of its ``K`` descriptors.

    Args:
        dims (int): Channels in and out.
        num_heads (int): Heads; each head partitions its own ``dims // num_heads`` channels.
        num_partitions (int): Partitions per head. A power of two for LSH. Defaults to 8.
        sr_ratio (int): Downsampling rate ``k`` of the depth-wise stride conv. Defaults to 1.
        attn_cfg (dict | AttentionConfig, optional): Options (:class:`AttentionConfig`);
            None or missing keys take the defaults. Defaults to None.
        norm_cfg (dict): Norm after the downsampling conv. Defaults to ``dict(type='BN')``.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> attn = PartitionAttention(dims=64, num_heads=2, num_partitions=8, sr_ratio=2)
        >>> attn(torch.rand(2, 64, 15, 17)).shape
        torch.Size([2, 64, 15, 17])
        >>> attn = PartitionAttention(32, 1, attn_cfg=dict(intra='token',
        ...                                                inter_importance='joint'))
        >>> attn(torch.rand(1, 32, 6, 6)).shape
        torch.Size([1, 32, 6, 6])
    """

    def __init__(self,
                 dims: int,
                 num_heads: int,
                 num_partitions: int = 8,
                 sr_ratio: int = 1,
                 attn_cfg: Union[None, Dict, AttentionConfig] = None,
                 norm_cfg: Dict = dict(type='BN'),
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = AttentionConfig.build(attn_cfg)
        if dims % num_heads != 0:
            raise ValueError(f'dims ({dims}) must be divisible by num_heads ({num_heads})')
        if cfg.partition == 'lsh' and (num_partitions < 2
                                       or num_partitions & (num_partitions - 1)):
            raise ValueError('num_partitions must be a power of two >= 2 for LSH, '
                             f'got {num_partitions}')
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio must be >= 1, got {sr_ratio}')
        self.cfg = cfg
        self.dims = dims
        self.num_heads = num_heads
        self.head_dims = dims // num_heads
        self.num_partitions = num_partitions
        self.sr_ratio = sr_ratio

        if sr_ratio > 1:
            self.down = conv_norm_act(dims, dims, sr_ratio, stride=sr_ratio, groups=dims,
                                      norm_cfg=norm_cfg)
        else:
            self.down = nn.Identity()
        # The "lightweight linear layer" that gives the transformed features x~ (eq. 7).
        self.value = nn.Linear(dims, dims)
        if cfg.partition == 'lsh':
            # Planes are buffers, not parameters: saved in checkpoints, so a loaded model
            # reproduces its partitions, and never trained (eq. 4 uses pre-defined normals).
            bits = int(math.log2(num_partitions))
            self.register_buffer('planes', torch.randn(num_heads, self.head_dims, bits))
        if cfg.use_inter:
            # SE-style importance coefficients of the partitions (eq. 9), shared by the heads.
            # Both readings have the same bottleneck; they differ in what the first layer sees
            # (one descriptor, or the K of a head) and what the last predicts (1, or K).
            hidden = max(self.head_dims // 4, 8)
            if cfg.inter_importance == 'partition':
                self.importance = nn.Sequential(
                    nn.Linear(self.head_dims, hidden), nn.GELU(), nn.Linear(hidden, 1))
            else:
                self.importance = nn.Sequential(
                    nn.Linear(num_partitions * self.head_dims, hidden), nn.GELU(),
                    nn.Linear(hidden, num_partitions))
        num_paths = int(cfg.use_intra) + int(cfg.use_inter)
        self.aggregate = nn.Linear(num_paths * dims, dims)
        # Channel to spatial undoes the downsampling; at k = 1 there is none to undo, and a
        # 1x1 conv there would be a third linear map between `aggregate` and the block's proj.
        self.to_spatial = nn.Conv2d(dims, dims * sr_ratio * sr_ratio, 1) if sr_ratio > 1 \
            else nn.Identity()
        # The fused ops' extension is imported here, not on the first forward, where
        # torch.compile would trace the import and the backend state it sets.
        ops.prepare_backend()

    def partition_codes(self, tokens: Tensor) -> Tensor:
        """Partition code of every token and head: (B, heads, n, d) -> (B, heads, n)."""
        with torch.no_grad():
            if self.cfg.partition == 'lsh':
                return ops.lsh_hash(tokens, self.planes)
            batch, heads, n, d = tokens.shape
            codes = ops.kmeans_assign(
                tokens.reshape(batch * heads, n, d), self.num_partitions, self.cfg.kmeans_iters)
            return codes.view(batch, heads, n)

    def partition_importance(self, desc: Tensor, counts: Tensor) -> Tensor:
        """Importance of each partition (eq. 9): (G, K, d) descriptors -> (G, K) weights.

        SE-style coefficients ``sigmoid(FC(GELU(FC(.))))`` of each partition's descriptor
        (``'partition'``) or of the ``K`` descriptors of the group flattened (``'joint'``),
        normalised to sum to one over the non-empty partitions of each group; an empty
        partition gets weight 0.
        """
        if self.cfg.inter_importance == 'partition':
            logits = self.importance(desc).squeeze(-1)
        else:
            logits = self.importance(desc.flatten(1))  # (G, K, d) -> (G, K*d) -> (G, K)
        importance = torch.sigmoid(logits)
        importance = importance * (counts > 0).to(importance.dtype)
        return importance / importance.sum(-1, keepdim=True).clamp(min=1e-6)

    def inter_features(self, values: Tensor, codes: Tensor) -> Tensor:
        """Inter-partition features (eqs. 8-9): (G, n, d) values -> (G, K, d), the mean
        descriptor of each partition times its :meth:`partition_importance`."""
        desc, counts = ops.partition_mean(values, codes, self.num_partitions)
        return desc * self.partition_importance(desc, counts).unsqueeze(-1)

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

        per_token: List[Tensor] = []  # (G, n, d) features of the tokens themselves
        pooled: List[Tensor] = []  # (G, K, d) partition features, scattered back below
        if self.cfg.use_intra and self.cfg.intra == 'pool':
            # Eqs. 6-7 pooled: per-channel softmax of the input over the partition weights the
            # transformed features into one proxy feature per partition.
            pooled.append(ops.partition_softmax_pool(tokens, values, codes, self.num_partitions))
        elif self.cfg.use_intra:
            # Eqs. 6-7 per token: each token's transformed feature times its softmax weight.
            weights = ops.partition_softmax(tokens, codes, self.num_partitions)
            per_token.append(weights * values.to(weights.dtype))
        if self.cfg.use_inter:
            pooled.append(self.inter_features(values, codes))
        if pooled:
            # Global to local: the partition features go back to the tokens in one gather.
            # Concatenating the (G, K, d) pooled features first is exactly the concatenation
            # of the gathered (G, n, d) maps, with K << n rows to copy.
            per_token.append(ops.partition_distribute(
                torch.cat(pooled, dim=-1) if len(pooled) > 1 else pooled[0], codes))
        y = torch.cat(per_token, dim=-1) if len(per_token) > 1 else per_token[0]
        # (B*heads, n, paths*d) -> (B, n, heads*paths*d)
        y = y.view(batch, heads, n, -1).transpose(1, 2).reshape(batch, n, -1)
        y = self.aggregate(y).transpose(1, 2).reshape(batch, channels, h, w)
        if k > 1:
            # Channel to spatial: (B, C, h, w) -> (B, C*k*k, h, w) -> (B, C, h*k, w*k).
            y = F.pixel_shuffle(self.to_spatial(y), k)[:, :, :height, :width]
        return x + y


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


class DualAttentionBlock(BaseModule):
    """Dual Attention Block, section 3.3.

    ``x = x + DropPath(Proj(Mix(Norm(x))))`` then ``x = x + DropPath(FFN(Norm(x)))``. In the
    default ``'parallel'`` mode, Mix splits the channels, runs the local branch (MBConv) on
    one part and MHPA on the other, and concatenates them; ``'serial'`` runs the local branch
    then MHPA on all channels (the serial row of Table 5). With ``local_branch='none'`` Mix is
    MHPA on all channels.

    Args:
        dims (int): Channels.
        num_heads (int): MHPA heads.
        mlp_ratio (float): FFN hidden width over ``dims``.
        sr_ratio (int): MHPA downsampling rate ``k``.
        num_partitions (int): Partitions per head.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        block_cfg (dict | BlockConfig, optional): Block options (:class:`BlockConfig`).
            Defaults to None (the paper's parallel block with MBConv).
        attn_cfg (dict | AttentionConfig, optional): MHPA options (:class:`AttentionConfig`).
            Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        with_cp (bool): Gradient checkpointing. The re-run of the forward in the backward
            leaves BatchNorm's running statistics as one forward left them. Defaults to False.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> block = DualAttentionBlock(64, num_heads=1, mlp_ratio=2, sr_ratio=2,
        ...                            num_partitions=4)
        >>> block(torch.rand(2, 64, 9, 11)).shape
        torch.Size([2, 64, 9, 11])
        >>> block.split
        (32, 32)
        >>> DualAttentionBlock(64, 1, 2, 2, 4, block_cfg=dict(local_branch='none')).split
        (0, 64)
    """

    def __init__(self,
                 dims: int,
                 num_heads: int,
                 mlp_ratio: float,
                 sr_ratio: int,
                 num_partitions: int,
                 drop_path: float = 0.,
                 block_cfg: Union[None, Dict, BlockConfig] = None,
                 attn_cfg: Union[None, Dict, AttentionConfig] = None,
                 norm_cfg: Dict = dict(type='BN'),
                 act_cfg: Dict = dict(type='GELU'),
                 with_cp: bool = False,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = BlockConfig.build(block_cfg)
        self.cfg = cfg
        self.with_cp = with_cp
        if cfg.local_branch == 'none':
            conv_dims, attn_dims = 0, dims
        elif cfg.mode == 'parallel':
            conv_dims = int(round(dims * cfg.conv_ratio))
            if not 0 < conv_dims < dims:
                raise ValueError(f"block_cfg['conv_ratio'] = {cfg.conv_ratio} leaves no "
                                 f'channels for one of the paths of a {dims}-channel block')
            attn_dims = dims - conv_dims
        else:
            conv_dims = attn_dims = dims
        self.split = (conv_dims, attn_dims)
        self.norm1 = build_norm2d(norm_cfg, dims)[1]
        self.conv: Optional[MBConv] = None
        if cfg.local_branch != 'none':
            self.conv = MBConv(conv_dims, use_dwconv=cfg.local_branch == 'mbconv',
                               norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.attn = PartitionAttention(attn_dims, num_heads, num_partitions=num_partitions,
                                       sr_ratio=sr_ratio, attn_cfg=attn_cfg, norm_cfg=norm_cfg)
        self.proj = nn.Conv2d(dims, dims, 1)
        self.norm2 = build_norm2d(norm_cfg, dims)[1]
        self.ffn = FFN(dims, int(dims * mlp_ratio), act_cfg=act_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        if self.conv is None:
            y = self.attn(y)
        elif self.cfg.mode == 'parallel':
            local, glob = torch.split(y, self.split, dim=1)
            y = torch.cat([self.conv(local), self.attn(glob)], dim=1)
        else:
            y = self.attn(self.conv(y))
        x = x + self.drop_path(self.proj(y))
        return x + self.drop_path(self.ffn(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint_keeping_statistics(self._forward, x, self)
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
        num_heads (int): MHPA heads.
        mlp_ratio (float): FFN hidden width over ``dims``.
        sr_ratio (int): MHPA downsampling rate ``k``. Defaults to 1.
        num_partitions (int): Partitions per head. Defaults to 8.
        block_cfg (dict | BlockConfig, optional): Block options, given to every block.
        attn_cfg (dict | AttentionConfig, optional): MHPA options, given to every block.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        with_cp (bool): Gradient checkpointing of each block. Defaults to False.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> stage = DualFormerStage(32, 64, depth=2, downsample=True, drop_paths=[0., 0.1],
        ...                         num_heads=1, mlp_ratio=2, sr_ratio=2, num_partitions=4)
        >>> stage(torch.rand(1, 32, 15, 15)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(self,
                 in_channels: int,
                 dims: int,
                 depth: int,
                 downsample: bool,
                 drop_paths: Sequence[float],
                 num_heads: int,
                 mlp_ratio: float,
                 sr_ratio: int = 1,
                 num_partitions: int = 8,
                 block_cfg: Union[None, Dict, BlockConfig] = None,
                 attn_cfg: Union[None, Dict, AttentionConfig] = None,
                 norm_cfg: Dict = dict(type='BN'),
                 act_cfg: Dict = dict(type='GELU'),
                 with_cp: bool = False,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if downsample:
            self.downsample = conv_norm_act(in_channels, dims, 3, stride=2, padding=1,
                                            norm_cfg=norm_cfg)
        else:
            self.downsample = nn.Identity()
        block_cfg, attn_cfg = BlockConfig.build(block_cfg), AttentionConfig.build(attn_cfg)
        self.blocks = ModuleList([
            DualAttentionBlock(dims, num_heads, mlp_ratio, sr_ratio, num_partitions,
                               drop_path=drop_paths[i], block_cfg=block_cfg,
                               attn_cfg=attn_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                               with_cp=with_cp)
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
        block_cfg (dict | BlockConfig, optional): Options of every Dual Attention Block
            (:class:`BlockConfig`): ``mode`` (``'parallel'`` or ``'serial'``, Table 5),
            ``conv_ratio`` and ``local_branch`` (``'mbconv'``, ``'pointwise'`` or ``'none'``,
            Table 5 "Depth-wise"). Missing keys take the defaults, the paper's block.
            Defaults to None.
        attn_cfg (dict | AttentionConfig, optional): Options of every MHPA
            (:class:`AttentionConfig`): ``partition`` (``'lsh'`` or ``'kmeans'``, Table 6),
            ``kmeans_iters``, ``intra`` (``'pool'`` or ``'token'``, eqs. 6-7), ``use_intra``
            and ``use_inter`` (Table 5), ``inter_importance`` (``'partition'`` or
            ``'joint'``, eq. 9). Missing keys take the defaults. Defaults to None.
        norm_cfg (dict): Norm config of every norm layer: ``'BN'``, ``'SyncBN'``, ``'GN'``
            (e.g. ``dict(type='GN', num_groups=1)``), ``'LN'``/``'LN2d'`` (LayerNorm over the
            channels of each pixel) or any other mmcv norm. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        channels_last (bool): Run the network in the channels-last (NHWC) memory layout:
            the input is converted once, every layer keeps the layout, and the outputs are
            converted back to contiguous NCHW (one copy each). oneDNN runs the 1x1 and
            depth-wise convolutions that dominate DualFormer faster in this layout, MHPA's
            token views become free, and on CPU the FFN runs over tiles of pixels
            (:class:`~dualformer_mm.models.layers.FFN`): DualFormer-S's forward at 224x224,
            batch 32, one thread, 1.24x as fast with the convolutions alone and 1.67x with the
            tiles (measured as ``docs/architecture.md``, "Memory layout and FFN tiles", says).
            The numbers computed are the same. Defaults to True.
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
            'mlp_ratios': [5.5, 3.5, 3.5, 2],
        }),
        **dict.fromkeys(['xs', 'xsmall'], {
            'depths': [2, 2, 4, 2],
            'channels': [64, 128, 320, 368],
            'num_heads': [1, 2, 5, 8],
            'mlp_ratios': [7, 7, 6, 3],
        }),
        **dict.fromkeys(['s', 'small'], {
            'depths': [4, 4, 7, 3],
            'channels': [64, 128, 320, 512],
            'num_heads': [1, 2, 5, 8],
            'mlp_ratios': [7, 7, 6.5, 4],
        }),
        **dict.fromkeys(['b', 'base'], {
            'depths': [6, 12, 25, 7],
            'channels': [64, 128, 368, 560],
            'num_heads': [1, 2, 8, 8],
            'mlp_ratios': [7.5, 7.5, 7.5, 1],
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
                 block_cfg: Union[None, Dict, BlockConfig] = None,
                 attn_cfg: Union[None, Dict, AttentionConfig] = None,
                 norm_cfg: Dict = dict(type='BN'),
                 act_cfg: Dict = dict(type='GELU'),
                 channels_last: bool = True,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = DEFAULT_INIT_CFG,
                 **kwargs) -> None:
        self._refuse_unknown_arguments(kwargs)
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
            conv_norm_act(in_channels, channels[0] // 2, 3, stride=2, padding=1,
                          norm_cfg=norm_cfg, act_cfg=act_cfg),
            conv_norm_act(channels[0] // 2, channels[0], 3, stride=2, padding=1,
                          norm_cfg=norm_cfg))

        # Checked once here; every block and MHPA receives the same two objects.
        self.block_cfg = BlockConfig.build(block_cfg)
        self.attn_cfg = AttentionConfig.build(attn_cfg)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = ModuleList()
        for i in range(self.num_stages):
            start = sum(depths[:i])
            self.stages.append(
                DualFormerStage(
                    channels[i - 1] if i else channels[0], channels[i], depths[i],
                    downsample=i > 0, drop_paths=rates[start:start + depths[i]],
                    num_heads=self.arch_settings['num_heads'][i],
                    mlp_ratio=self.arch_settings['mlp_ratios'][i], sr_ratio=sr_ratios[i],
                    num_partitions=num_partitions[i], block_cfg=self.block_cfg,
                    attn_cfg=self.attn_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                    with_cp=with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm2d(norm_cfg, channels[i])[1])
        if channels_last:
            # Conv weights in the same layout as the activations, or every strided conv
            # re-lays its weight out on each call.
            self.to(memory_format=torch.channels_last)
        self._freeze_stages()

    @staticmethod
    def _refuse_unknown_arguments(kwargs: Dict) -> None:
        """Name the config an option of :class:`BlockConfig` or :class:`AttentionConfig`
        belongs to when it is passed to the backbone itself."""
        for name in kwargs:
            if name == 'use_dwconv':
                raise TypeError("DualFormer has no argument 'use_dwconv': the local branch is "
                                "block_cfg=dict(local_branch='mbconv' | 'pointwise' | 'none'); "
                                "use_dwconv=False is local_branch='pointwise'")
            for config in (BlockConfig, AttentionConfig):
                if name in {f.name for f in dataclasses.fields(config)}:
                    raise TypeError(f'DualFormer has no argument {name!r}: it is an option of '
                                    f'{config.arg_name}, e.g. {config.arg_name}=dict({name}=...)')
            raise TypeError(f'DualFormer got an unexpected keyword argument {name!r}')

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

    @staticmethod
    def _check_finite(x: Tensor) -> None:
        """Refuse NaN/Inf input, which would otherwise come out as NaN features with no hint.

        One reduction per eager forward, negligible next to the backbone. On CPU it raises a
        ``ValueError`` at once. On other devices reading the answer would make the host wait
        for the device in every forward (and break CUDA graph capture), so the check is a
        device-side assert (``torch._assert_async``): a NaN input stops the run at its next
        synchronisation with "CUDA error: device-side assert triggered" (run with
        ``CUDA_LAUNCH_BLOCKING=1`` to see it raised at this forward). Skipped when tracing
        (FLOP counting, ONNX) or compiling, where it would break the graph.
        """
        if torch.jit.is_tracing() or compat.is_compiling():
            return
        finite = torch.isfinite(x).all()
        if x.device.type != 'cpu':
            torch._assert_async(finite, NAN_INPUT_MESSAGE)
        elif not finite:
            raise ValueError(NAN_INPUT_MESSAGE)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'DualFormer expects input of shape (N, {self.in_channels}, H, W), '
                             f'got {tuple(x.shape)}')
        self._check_finite(x)
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
