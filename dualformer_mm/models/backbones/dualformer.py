# Copyright (c) dualformer-mm contributors.
"""DualFormer backbone.

Implements "Dual Path Transformer with Partition Attention" (DualFormer): section 3.1 (overall
architecture, Table 1 sizes) and section 3.3 (the Dual Attention Block), read here as Block ->
Stage -> Backbone. The block's parts have their own files in ``dualformer_mm/models/utils``:
Multi-Head Partition Attention of section 3.2 (:class:`~dualformer_mm.models.PartitionAttention`),
the local branch (:class:`~dualformer_mm.models.MBConv`) and the options that switch between
readings of the paper and the ablations of Tables 5 and 6
(:class:`~dualformer_mm.models.BlockConfig`, :class:`~dualformer_mm.models.AttentionConfig`).
Where the paper is ambiguous, the choices are written in ``docs/architecture.md``.

One copy of the model serves mmpretrain, mmdet and mmseg: it is registered in mmengine's
root ``MODELS`` registry, which the three toolboxes' registries search.
"""
import dataclasses
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.registry import MODELS
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from dualformer_mm import compat
from ..layers import FFN, build_norm2d, checkpoint_keeping_statistics
from ..utils import AttentionConfig, BlockConfig, MBConv, PartitionAttention, conv_norm_act

# TruncNormal(0.02) for every conv and linear, identity norms, as ConvNeXt and Swin
# initialise; the convs are plain nn.Conv2d (no mmcv ConvModule, whose own init_weights would
# replace this with Kaiming after the parent's init_cfg has run).
DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    dict(type='Constant', layer=['_BatchNorm', 'GroupNorm', 'LayerNorm'], val=1., bias=0.),
]
#: The values of DualFormer's ``check_finite``: which inputs are checked for NaN and Inf.
CHECK_FINITE_MODES = ('cpu', 'all', 'off')


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
        block_cfg (dict | BlockConfig, optional): Block options
            (:class:`~dualformer_mm.models.BlockConfig`). Defaults to None (the paper's
            parallel block with MBConv).
        attn_cfg (dict | AttentionConfig, optional): MHPA options
            (:class:`~dualformer_mm.models.AttentionConfig`). Defaults to None.
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
            (:class:`~dualformer_mm.models.BlockConfig`): ``mode`` (``'parallel'`` or
            ``'serial'``, Table 5), ``conv_ratio`` and ``local_branch`` (``'mbconv'``,
            ``'pointwise'`` or ``'none'``, Table 5 "Depth-wise"). Missing keys take the
            defaults, the paper's block. Defaults to None.
        attn_cfg (dict | AttentionConfig, optional): Options of every MHPA
            (:class:`~dualformer_mm.models.AttentionConfig`): ``partition`` (``'lsh'`` or
            ``'kmeans'``, Table 6), ``kmeans_iters``, ``intra`` (``'pool'`` or ``'token'``,
            eqs. 6-7), ``use_intra`` and ``use_inter`` (Table 5), ``inter_importance``
            (``'partition'`` or ``'joint'``, eq. 9). Missing keys take the defaults.
            Defaults to None.
        norm_cfg (dict): Norm config of every norm layer: ``'BN'``, ``'SyncBN'``, ``'GN'``
            (e.g. ``dict(type='GN', num_groups=1)``), ``'LN'``/``'LN2d'`` (LayerNorm over the
            channels of each pixel) or any other mmcv norm. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        check_finite (str): Which inputs are checked for NaN and Inf values before the
            stem: ``'cpu'``, inputs on the CPU; ``'all'``, inputs on every device; ``'off'``,
            none. A failed check raises a ``ValueError`` naming the batch indices of the
            images with such values (``non_finite_images``). On a GPU the host has to
            wait for the answer, one synchronisation per forward, and the check cannot be
            captured in a CUDA graph, so ``'cpu'`` leaves GPU inputs unchecked; ``'all'``
            is for finding a bad image or data pipeline. The check is skipped while tracing
            (ONNX export, FLOP counting) or compiling. Defaults to ``'cpu'``.
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

    #: The keys of a custom ``arch`` dict.
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
    # The layout of the state dict, saved in its metadata; _load_from_state_dict reads the
    # older ones. 1: the norm of each conv-norm pair named after its type as mmcv's
    # ConvModule names it ('stem.0.bn.weight'), the FFN's convs 'ffn.0' and 'ffn.2', and a
    # 1x1 conv 'to_spatial' in MHPA at k = 1 too. 2: 'stem.0.norm.weight', 'ffn.fc1',
    # 'ffn.fc2', no conv after the aggregation at k = 1.
    _version = 2

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
                 check_finite: str = 'cpu',
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
        if check_finite not in CHECK_FINITE_MODES:
            raise ValueError(f'check_finite must be one of {CHECK_FINITE_MODES}, '
                             f'got {check_finite!r}')
        self.check_finite = check_finite
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
        """Name the config an option of ``BlockConfig`` or ``AttentionConfig``
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

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """The depth of a parameter, for layer-wise learning-rate decay.

        mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` scales the learning rate of
        a parameter at depth ``d`` by ``layer_decay_rate ** (num_layers - 1 - d)``, asking the
        classifier, which asks its backbone with ``prefix='backbone.'``. The depths follow the
        network: the stem is 0; block ``j`` of stage ``i`` is ``sum(depths[:i]) + j + 1``; a
        stage's downsampling conv and its norm run right before the stage's first block and
        take that block's depth, as Swin's take the depth of the block next to them in their
        stage (Swin downsamples at the end of a stage, DualFormer at the start); the output
        norms, and every parameter outside the backbone (neck, head), take the top depth
        ``num_layers - 1``, as Swin's output norms do. ``num_layers`` is the number of blocks
        plus 2.

        Args:
            param_name (str): The name of a parameter of the model that holds the backbone.
            prefix (str): The backbone's prefix in that model (``'backbone.'`` in a
                classifier). Defaults to ``''``.

        Returns:
            tuple[int, int]: The parameter's depth and ``num_layers``.

        Example:
            >>> model = DualFormer(arch='t')  # 2 + 2 + 4 + 2 blocks: 12 depths
            >>> model.get_layer_depth('backbone.stem.0.conv.weight', 'backbone.')
            (0, 12)
            >>> model.get_layer_depth('stages.1.downsample.conv.weight')
            (3, 12)
            >>> model.get_layer_depth('stages.1.blocks.0.proj.weight')
            (3, 12)
            >>> model.get_layer_depth('head.fc.weight', 'backbone.')
            (11, 12)
        """
        depths = self.arch_settings['depths']
        num_layers = sum(depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] == 'stem':
            return 0, num_layers
        if parts[0] == 'stages':
            stage = int(parts[1])
            first_block = sum(depths[:stage]) + 1
            if parts[2] == 'blocks':
                return first_block + int(parts[3]), num_layers
            return first_block, num_layers  # the stage's downsampling
        return num_layers - 1, num_layers

    def _load_from_state_dict(self, state_dict: Dict[str, Tensor], prefix: str,
                              local_metadata: Dict, *args: Any, **kwargs: Any) -> None:
        version = local_metadata.get('version')
        if version is not None and version > self._version:
            raise RuntimeError(
                f'The DualFormer state dict under {prefix!r} has layout version {version}; '
                f'this dualformer-mm reads versions up to {self._version}. Load it with the '
                'dualformer-mm that saved it, or a newer one')
        if version is None or version < 2:
            # Every checkpoint saved before the version was recorded says 1 (nn.Module's
            # default), in either layout, and one without metadata says nothing: layout 1 is
            # recognised by its keys, and the keys of layout 2 are left as they are.
            self._upgrade_layout_1(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def _upgrade_layout_1(self, state_dict: Dict[str, Tensor], prefix: str) -> None:
        """Rewrite the keys of state-dict layout 1 (see ``_version``) in place."""
        for name, module in self.named_modules():
            at = f'{prefix}{name}.' if name else prefix
            if isinstance(module, nn.Sequential) and {'conv', 'norm'} <= set(module._modules):
                # A conv_norm_act; mmcv's ConvModule named the norm 'bn', 'gn', 'ln' or 'in'.
                for old in ('bn', 'gn', 'ln', 'in'):
                    _rename_keys(state_dict, f'{at}{old}.', f'{at}norm.')
            elif isinstance(module, FFN):
                _rename_keys(state_dict, f'{at}0.', f'{at}fc1.')
                _rename_keys(state_dict, f'{at}2.', f'{at}fc2.')
            elif isinstance(module, PartitionAttention) and module.sr_ratio == 1:
                _fold_into_aggregate(state_dict, at)

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

    def _check_finite(self, x: Tensor) -> None:
        """Refuse NaN/Inf input, which would otherwise come out as NaN features with no hint.

        Which inputs are checked is ``check_finite``'s choice (see the class). The check is
        one reduction and one value read on the host, negligible next to the backbone on a
        CPU. Skipped when tracing (FLOP counting, ONNX) or compiling, where it would break
        the graph.
        """
        if self.check_finite == 'off' or (self.check_finite == 'cpu'
                                          and x.device.type != 'cpu'):
            return
        if torch.jit.is_tracing() or compat.is_compiling():
            return
        bad = non_finite_images(x)
        if bad:
            raise ValueError(
                f'DualFormer input contains NaN or Inf values in {len(bad)} of '
                f'{x.shape[0]} images, at batch indices {bad}; check the data pipeline and '
                'normalisation')

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


def non_finite_images(x: Tensor) -> List[int]:
    """The batch indices of the images of ``x`` that hold a NaN or an Inf value.

    One flag is read on the host (on a GPU, the host waits for the device), and the indices
    only when some image has such values.

    Args:
        x (Tensor): A batch, ``(N, ...)``.

    Returns:
        list[int]: The indices, in increasing order; empty when every value is finite.

    Example:
        >>> x = torch.zeros(4, 3, 2, 2)
        >>> x[1, 0, 0, 0], x[3, 2, 1, 1] = float('nan'), float('-inf')
        >>> non_finite_images(x), non_finite_images(x[:1])
        ([1, 3], [])
    """
    finite = torch.isfinite(x).flatten(1).all(1)
    if bool(finite.all()):
        return []
    return (~finite).nonzero().flatten().tolist()


def _rename_keys(state_dict: Dict[str, Tensor], old: str, new: str) -> None:
    """Give every key that starts with ``old`` the start ``new`` instead, in place."""
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[new + key[len(old):]] = state_dict.pop(key)


def _fold_into_aggregate(state_dict: Dict[str, Tensor], at: str) -> None:
    """Fold the 1x1 conv ``to_spatial`` of a layout-1 MHPA at k = 1 into ``aggregate``.

    There, ``to_spatial(aggregate(y))`` applied two linear maps to each token in turn, which
    make one: ``W = W_s @ W_a`` and ``b = W_s @ b_a + b_s`` (computed in float64), so the
    migrated MHPA computes what the old one did. Keys that do not fit are left for
    ``load_state_dict`` to report.
    """
    keys = [f'{at}{name}' for name in ('to_spatial.weight', 'to_spatial.bias',
                                        'aggregate.weight', 'aggregate.bias')]
    if not all(key in state_dict for key in keys):
        return
    w_s, b_s, w_a, b_a = (state_dict[key] for key in keys)
    channels = w_a.shape[0]
    if w_s.shape != (channels, channels, 1, 1) or b_s.shape != b_a.shape:
        return
    w_s = w_s.flatten(1).double()  # (C, C, 1, 1) -> (C, C)
    state_dict[keys[2]] = (w_s @ w_a.double()).to(w_a.dtype)
    state_dict[keys[3]] = (w_s @ b_a.double() + b_s.double()).to(b_a.dtype)
    del state_dict[keys[0]], state_dict[keys[1]]
