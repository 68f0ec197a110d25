# Copyright (c) dualformer-mm contributors.
"""DualFormer ("Dual Path Transformer with Partition Attention") as timm models.

Imported by :func:`dualformer_mm.integrations.register_timm_models` when timm imports; it
registers ``dualformer_t``, ``dualformer_xs``, ``dualformer_s`` and ``dualformer_b``.

The timm model *is* the classifier of ``configs/mmpretrain`` (``configs/_base_/models/
dualformer_cls.py``): the same :class:`~dualformer_mm.models.DualFormer` backbone under ``backbone``
with the output norm of its last stage, global average pooling and a linear layer under
``head.fc``. The state dict keys are the mmpretrain classifier's, so a checkpoint trained with
``configs/mmpretrain`` loads as it is (:func:`checkpoint_filter_fn` only unwraps it), and the
timm model's state dict loads into the mmpretrain classifier (:func:`to_mmpretrain`).

``features_only=True`` goes through timm's own wrappers: the getter wrapper over
:meth:`DualFormerTimm.forward_intermediates` on timm >= 1.0, forward hooks on timm 0.9. The
backbone then has an output norm on every stage in ``out_indices``, as the detection and
segmentation configs build it, and the features are the maps those toolboxes receive.

Example:
    >>> import timm
    >>> import dualformer_mm  # registers the models when timm is installed
    >>> model = timm.create_model('dualformer_t', num_classes=10).eval()
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    >>> feats = timm.create_model('dualformer_t', features_only=True, out_indices=(1, 3))
    >>> feats.feature_info.channels(), feats.feature_info.reduction()
    ([128, 320], [8, 32])
"""
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import timm
import torch
import torch.nn as nn
from mmengine.model import initialize
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead
from timm.models import (build_model_with_cfg, generate_default_cfgs, register_model,
                         resolve_pretrained_cfg)
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..compat import parse_version
from ..models import DualFormer

TIMM_VERSION = parse_version(timm.__version__)
#: timm >= 1.0: ``forward_intermediates`` and the getter feature wrapper that calls it.
HAS_FORWARD_INTERMEDIATES = TIMM_VERSION >= (1, 0)
#: Feature wrappers of timm that fit a model whose stages are not one flat Sequential.
FEATURE_CLASSES = ('getter', 'hook') if HAS_FORWARD_INTERMEDIATES else ('hook', )

#: timm model name -> DualFormer size (``arch_zoo`` key).
MODEL_ARCHS = {'dualformer_t': 't', 'dualformer_xs': 'xs', 'dualformer_s': 's',
               'dualformer_b': 'b'}
# The last stage keeps its output norm in the classifier (configs/_base_/models/
# dualformer_cls.py: out_indices=(3, )).
LAST_STAGE = DualFormer.num_stages - 1
#: The classifier's init (configs/_base_/models/dualformer_cls.py, ``head.init_cfg``).
HEAD_INIT_CFG = dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)
# The norms norm_cfg builds: BN and its synchronised variants, GN, LN/LN2d (LayerNorm2d).
NORM_LAYERS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)
NO_WEIGHTS_MESSAGE = (
    'No pretrained DualFormer weights are published yet, so {name} has none to load '
    '(pretrained=True). Create it with pretrained=False, or load a checkpoint trained with '
    "configs/mmpretrain: timm.create_model('{name}', pretrained=True, "
    "pretrained_cfg_overlay=dict(file='path/to/epoch_300.pth'))")


def _normalise_indices(indices: Union[int, Sequence[int]], num_stages: int) -> Tuple[int, ...]:
    """timm's index convention: an int is the last n stages, negatives count from the end."""
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f'out_indices as an int takes the last n stages, n in 1..'
                             f'{num_stages}; got {indices}')
        return tuple(range(num_stages - indices, num_stages))
    parsed = []
    for index in indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(f'out_indices must be in -{num_stages}..{num_stages - 1}, '
                             f'got {list(indices)}')
        parsed.append(index % num_stages)
    if not parsed:
        raise ValueError('out_indices must name at least one stage')
    return tuple(sorted(set(parsed)))


class DualFormerTimm(nn.Module):
    """The DualFormer classifier of ``configs/mmpretrain`` with timm's model interface.

    Args:
        arch (str | dict): DualFormer size, as :class:`~dualformer_mm.models.DualFormer` takes it.
            Defaults to ``'t'``.
        num_classes (int): Classes of the linear classifier; 0 leaves it out (the pooled
            features come out). Defaults to 1000.
        global_pool (str): timm pooling type (``'avg'`` is the classifier's GAP neck; ``''``
            keeps the map). Defaults to ``'avg'``.
        in_chans (int): Input channels. Defaults to 3.
        drop_rate (float): Dropout before the classifier (the recipes use none). Defaults
            to 0.
        drop_path_rate (float): Stochastic depth of the backbone; the recipes of
            ``configs/mmpretrain`` train t/xs/s/b with 0.1/0.1/0.2/0.4. Defaults to 0.
        norm_indices (Sequence[int]): Stages whose output has an output norm, the
            backbone's ``out_indices``; the last stage always has one. Defaults to ``(3, )``,
            the classifier; ``features_only`` models get their ``out_indices``.
        **backbone_kwargs: Further :class:`~dualformer_mm.models.DualFormer` arguments
            (``norm_cfg``, ``with_cp``, ``block_cfg``, ``attn_cfg``, ...).

    Example:
        >>> model = DualFormerTimm('t', num_classes=5).eval()
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 5])
        >>> model.forward_features(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 320, 2, 2])
        >>> model = DualFormerTimm('t', num_classes=5, norm_cfg=dict(type='LN2d'),
        ...                        attn_cfg=dict(intra='token'))
        >>> model.backbone.attn_cfg.intra, type(model.backbone.norm3).__name__
        ('token', 'LayerNorm2d')
    """

    def __init__(self,
                 arch: Union[str, Dict] = 't',
                 num_classes: int = 1000,
                 global_pool: str = 'avg',
                 in_chans: int = 3,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 norm_indices: Sequence[int] = (LAST_STAGE, ),
                 **backbone_kwargs: Any) -> None:
        super().__init__()
        norm_indices = sorted(set(_normalise_indices(norm_indices, DualFormer.num_stages))
                              | {LAST_STAGE})
        self.backbone = DualFormer(arch=arch, in_channels=in_chans, out_indices=norm_indices,
                                   drop_path_rate=drop_path_rate, **backbone_kwargs)
        channels = self.backbone.channels
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = channels[-1]
        self.head = ClassifierHead(channels[-1], num_classes, pool_type=global_pool,
                                   drop_rate=drop_rate)
        # The recipe's init, which mmengine applies to the mmpretrain classifier through
        # init_weights(); initialize() leaves out init_weights' parameter-by-parameter log.
        if self.backbone.init_cfg is not None:
            initialize(self.backbone, self.backbone.init_cfg)
        initialize(self.head, HEAD_INIT_CFG)
        self.feature_info = [
            dict(num_chs=channels[i], reduction=4 * 2**i,
                 # The hook wrapper reads the stage's map where its output norm is.
                 module=f'backbone.norm{i}' if i in self.backbone.out_indices
                 else f'backbone.stages.{i}')
            for i in range(DualFormer.num_stages)
        ]

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The linear classifier (``head.fc``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a new one of ``num_classes`` (0: none).

        Args:
            num_classes (int): New number of classes.
            global_pool (str, optional): New pooling type; unchanged when None.
        """
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, pool_type=global_pool)
        initialize(self.head, HEAD_INIT_CFG)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's normalised map, (N, C, H/32, W/32): the backbone's own forward."""
        return self.backbone(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooling, dropout and the classifier; ``pre_logits`` stops before the classifier."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def _output_norm(self, index: int, x: Tensor) -> Tensor:
        if index in self.backbone.out_indices:
            x = getattr(self.backbone, f'norm{index}')(x)
        return x.contiguous()

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """The maps of the stages in ``indices`` (timm >= 1.0's interface).

        Args:
            x (Tensor): Images (N, C, H, W).
            indices (int | Sequence[int], optional): Stages to return: the last n for an int,
                all for None. Defaults to None.
            norm (bool): Pass each map through its stage's output norm where the backbone
                has one (every stage of a ``features_only`` model; the last stage of the
                classifier). Defaults to False (the stages' raw outputs).
            stop_early (bool): Run no stage after the last one asked for. Defaults to False.
            output_fmt (str): Only ``'NCHW'``. Defaults to ``'NCHW'``.
            intermediates_only (bool): Return only the maps. Defaults to False.

        Returns:
            list[Tensor] | tuple[Tensor, list[Tensor]]: The maps, preceded by the final
            normalised map (as :meth:`forward_features`) unless ``intermediates_only``.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW' for DualFormer, got {output_fmt!r}")
        backbone = self.backbone
        take = _normalise_indices(len(backbone.stages) if indices is None else indices,
                                  len(backbone.stages))
        if norm and intermediates_only and take == tuple(backbone.out_indices):
            # What timm's feature wrapper asks of a features_only model: the backbone's own
            # forward, as mmdet and mmseg run it, input checks included.
            return list(backbone(x))
        if backbone.channels_last:
            # The layout the backbone's forward runs in (DualFormer's channels_last).
            x = x.contiguous(memory_format=torch.channels_last)
        x = backbone.stem(x)
        stages = backbone.stages[:max(take) + 1] if stop_early else backbone.stages
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self._output_norm(i, x) if norm else x.contiguous())
        if intermediates_only:
            return intermediates
        return self._output_norm(len(stages) - 1, x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1,
                                  prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (timm >= 1.0's interface).

        Args:
            indices (int | Sequence[int]): The stages that will be asked for. Defaults to 1.
            prune_norm (bool): Also drop every output norm (the maps are taken raw).
                Defaults to False.
            prune_head (bool): Drop the classifier. Defaults to True.

        Returns:
            list[int]: ``indices`` as non-negative stage indices.
        """
        backbone = self.backbone
        take = _normalise_indices(indices, len(backbone.stages))
        last = max(take)
        backbone.stages = backbone.stages[:last + 1]
        keep = tuple(i for i in backbone.out_indices if i <= last and not prune_norm)
        for i in backbone.out_indices:
            if i not in keep:
                delattr(backbone, f'norm{i}')
        backbone.out_indices = keep
        if prune_head or last < LAST_STAGE:
            self.reset_classifier(0, '')
        return list(take)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """The layers of timm's layer-wise learning-rate decay.

        ``timm.optim.create_optimizer_v2(model, ..., layer_decay=r)`` scales each layer's
        learning rate by ``r ** (last - layer)`` over the layers these regular expressions
        give: the stem first, then every block (or every stage with ``coarse=True``), a
        stage's downsampling in the layer of the stage's first block. The output norms and
        the classifier match none and come last, with the full learning rate. These are the
        depths :meth:`DualFormer.get_layer_depth <dualformer_mm.models.DualFormer.get_layer_depth>`
        gives mmpretrain's layer-decay constructor.

        Args:
            coarse (bool): One layer per stage instead of one per block. Defaults to False.

        Returns:
            dict: timm's group matcher, ``stem`` and ``blocks`` patterns of parameter names.

        Example:
            >>> from timm.models import group_parameters
            >>> model = DualFormerTimm('t', num_classes=5)
            >>> layers = group_parameters(model, model.group_matcher(), reverse=True)
            >>> [layers[name] for name in ('backbone.stem.0.conv.weight',
            ...                            'backbone.stages.0.blocks.0.proj.weight',
            ...                            'backbone.stages.3.blocks.1.proj.weight',
            ...                            'head.fc.weight')]
            [0, 1, 10, 11]
        """
        return dict(
            stem=r'^backbone\.stem\.',
            blocks=r'^backbone\.stages\.(\d+)\.' if coarse else [
                # Ordinal (stage, 0): the layer of the stage's first block.
                (r'^backbone\.stages\.(\d+)\.downsample\.', (0, )),
                (r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.', None),
            ])

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The parameters timm's optimizers train without weight decay.

        Every parameter of a norm layer and every bias, as the recipe of
        ``configs/mmpretrain`` excludes them (``norm_decay_mult=0``, ``bias_decay_mult=0``).
        timm's rule for 1-D parameters excludes the same ones; naming them keeps them
        excluded with ``filter_bias_and_bn=False`` too. DualFormer has no positional or
        relative-position parameters: the LSH hyperplanes are buffers, never trained.

        Returns:
            set[str]: Parameter names.

        Example:
            >>> names = DualFormerTimm('t', num_classes=5).no_weight_decay()
            >>> sorted(n for n in names if n.startswith('backbone.stem.'))
            ['backbone.stem.0.norm.bias', 'backbone.stem.0.norm.weight', \
'backbone.stem.1.norm.bias', 'backbone.stem.1.norm.weight']
        """
        names = set()
        for module_name, module in self.named_modules():
            for name, _ in module.named_parameters(recurse=False):
                if name == 'bias' or isinstance(module, NORM_LAYERS):
                    names.add(f'{module_name}.{name}' if module_name else name)
        return names

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing of every block (the backbone's ``with_cp``)."""
        for module in self.backbone.modules():
            if hasattr(module, 'with_cp'):
                module.with_cp = enable


def checkpoint_filter_fn(state_dict: Dict[str, Tensor],
                         model: DualFormerTimm) -> Dict[str, Tensor]:
    """Fit an OpenMMLab DualFormer checkpoint to ``model`` (timm's ``pretrained_filter_fn``).

    Takes an mmengine checkpoint or its state dict: a classifier of ``configs/mmpretrain``
    (the keys are this model's), or a detector or segmentor (their ``backbone.*`` keys).
    Keys outside the backbone and the classifier are dropped. The output norms of stages the
    checkpoint has none for keep ``model``'s own initial values, as the detection and
    segmentation configs start ``norm0``-``norm2`` from a classifier; norms the model does
    not have are dropped. A ``module.`` prefix (DistributedDataParallel) is removed.

    Args:
        state_dict (dict): Checkpoint, or its ``state_dict``.
        model (DualFormerTimm): The model the weights are for.

    Returns:
        dict: A state dict for ``model.load_state_dict``.
    """
    state_dict = state_dict.get('state_dict', state_dict)
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in state_dict.items()}
    own = model.state_dict()
    out = {k: v for k, v in state_dict.items()
           if k.startswith('backbone.') or k.startswith('head.fc.')}
    for i in range(DualFormer.num_stages):
        prefix = f'backbone.norm{i}.'
        if not any(k.startswith(prefix) for k in own):
            out = {k: v for k, v in out.items() if not k.startswith(prefix)}
        elif not any(k.startswith(prefix) for k in out):
            out.update({k: v for k, v in own.items() if k.startswith(prefix)})
    return out


def to_mmpretrain(model_or_state: Union[nn.Module, Dict[str, Tensor]]) -> Dict[str, Dict]:
    """An mmengine checkpoint for the ``configs/mmpretrain`` classifier from a timm model.

    Args:
        model_or_state (nn.Module | dict): A timm DualFormer (a ``features_only`` one too:
            its wrapper's ``model.`` prefix is removed) or its state dict.

    Returns:
        dict: ``{'state_dict': ...}``, for ``torch.save`` and then ``load_from``, mmengine's
        ``load_checkpoint`` or the configs' ``init_cfg``.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) \
        else model_or_state
    state = {k[len('model.'):] if k.startswith('model.') else k: v for k, v in state.items()}
    return {'state_dict': {k: v for k, v in state.items()
                           if k.startswith('backbone.') or k.startswith('head.fc.')}}


def _feature_cfg(feature_cls: str) -> Dict[str, Any]:
    """timm's feature wrapper for DualFormer: the getter (timm >= 1.0) or forward hooks."""
    if feature_cls == 'getter' and HAS_FORWARD_INTERMEDIATES:
        # norm=True: the maps through their output norms, as mmdet and mmseg receive them.
        return dict(feature_cls='getter', norm=True)
    if feature_cls == 'hook':
        # The model is left whole; the hooks read the output norms' maps.
        return dict(feature_cls='hook', no_rewrite=True)
    raise ValueError(f'feature_cls must be one of {FEATURE_CLASSES} for DualFormer with timm '
                     f'{timm.__version__}, got {feature_cls!r}')


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if not (cfg.has_weights or cfg.state_dict):
            raise RuntimeError(NO_WEIGHTS_MESSAGE.format(name=variant))
    feature_cfg = None
    if kwargs.get('features_only'):
        out_indices = _normalise_indices(kwargs.get('out_indices', (0, 1, 2, 3)),
                                          DualFormer.num_stages)
        kwargs['out_indices'] = out_indices
        kwargs['norm_indices'] = out_indices
        feature_cfg = _feature_cfg(kwargs.pop('feature_cls', FEATURE_CLASSES[0]))
    return build_model_with_cfg(DualFormerTimm, variant, pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=feature_cfg, arch=MODEL_ARCHS[variant], **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # The evaluation of configs/mmpretrain (mmpretrain's imagenet_bs64_swin_224): short side
    # to 256 bicubic, centre crop 224, ImageNet mean and std.
    return dict(url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7),
                crop_pct=224 / 256, crop_mode='center', interpolation='bicubic',
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv='backbone.stem.0.conv', classifier='head.fc',
                fixed_input_size=False, **kwargs)


default_cfgs = generate_default_cfgs({name: _cfg() for name in MODEL_ARCHS})


@register_model
def dualformer_t(pretrained: bool = False, **kwargs: Any) -> DualFormerTimm:
    """DualFormer-T (5.5M parameters, 1.3 GFLOPs at 224x224; paper Table 1)."""
    return _create('dualformer_t', pretrained, **kwargs)


@register_model
def dualformer_xs(pretrained: bool = False, **kwargs: Any) -> DualFormerTimm:
    """DualFormer-XS (10.5M parameters, 2.3 GFLOPs at 224x224; paper Table 1)."""
    return _create('dualformer_xs', pretrained, **kwargs)


@register_model
def dualformer_s(pretrained: bool = False, **kwargs: Any) -> DualFormerTimm:
    """DualFormer-S (22.6M parameters, 4.4 GFLOPs at 224x224; paper Table 1)."""
    return _create('dualformer_s', pretrained, **kwargs)


@register_model
def dualformer_b(pretrained: bool = False, **kwargs: Any) -> DualFormerTimm:
    """DualFormer-B (74.0M parameters, 15.8 GFLOPs at 224x224; paper Table 1)."""
    return _create('dualformer_b', pretrained, **kwargs)
