# Copyright (c) dualformer-mm contributors.
"""Layer-wise learning-rate decay for fine-tuning in mmpretrain, mmdet and mmseg.

mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` asks the model for
``get_layer_depth``, which its classifiers have and mmdet's detectors and mmseg's segmentors do
not; mmdet's and mmseg's own layer-decay constructors know only ConvNeXt (and, in mmseg, BEiT
and MAE).
:class:`LayerDecayOptimWrapperConstructor` asks the backbone, so the same ``optim_wrapper``
works in the configs of all three toolboxes. Importing ``dualformer_mm`` registers it in
mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS`` registry, which the registries of the three
toolboxes search after their own.
"""
import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

#: The ``paramwise_cfg`` keys :class:`LayerDecayOptimWrapperConstructor` reads.
PARAMWISE_KEYS = ('layer_decay_rate', 'norm_decay_mult', 'bias_decay_mult', 'flat_decay_mult',
                  'custom_keys')
#: The keys of one ``custom_keys`` entry.
CUSTOM_KEY_OPTIONS = ('lr_mult', 'decay_mult')

_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise learning-rate decay over the backbone's depths, for any OpenMMLab model.

    Each trainable parameter gets the learning rate ``lr * layer_decay_rate ** (num_layers - 1
    - depth)``, where the backbone's ``get_layer_depth(param_name, prefix)`` gives ``depth``
    and ``num_layers`` (:meth:`dualformer_mm.models.DualFormer.get_layer_depth`: the stem 0,
    one depth per block, the output norms at the top). The parameters of ``model.backbone``
    take their depth from it; every other parameter (neck, heads) takes the top depth
    ``num_layers - 1`` and trains at ``lr``. A model that has ``get_layer_depth`` itself, as
    mmpretrain's ``ImageClassifier`` does, is asked directly. Frozen parameters
    (``requires_grad=False``, e.g. ``frozen_stages``) get no group.

    Weight decay is the optimizer's ``weight_decay`` times a multiplier, the first that
    applies of: the matching ``custom_keys`` entry's ``decay_mult``; ``norm_decay_mult`` for
    the parameters of norm layers; ``bias_decay_mult`` for biases; ``flat_decay_mult`` for
    every other one-dimensional parameter; 1. These are the rules of mmpretrain's and
    mmengine's constructors, except that ``flat_decay_mult`` defaults to 0: norms and biases
    are one-dimensional, so by default none of them, and no other 1-D parameter, is decayed.
    ``flat_decay_mult=1.0`` decays them all.

    The parameters that share a depth and multipliers share one parameter group, which also
    holds ``layer_id`` (the depth), ``lr_scale`` (the decay factor) and ``param_names``.

    Args:
        optim_wrapper_cfg (dict): The ``optim_wrapper`` config without ``constructor`` and
            ``paramwise_cfg``; ``optimizer.lr`` and ``optimizer.weight_decay`` are required.
        paramwise_cfg (dict): Keys:

            - ``layer_decay_rate`` (float, required): the decay per depth, in (0, 1]; 1 gives
              every parameter ``lr``.
            - ``norm_decay_mult``, ``bias_decay_mult`` (float, optional): weight-decay
              multipliers of norm parameters and of biases. Default: not applied (the
              ``flat_decay_mult`` rule decides).
            - ``flat_decay_mult`` (float): weight-decay multiplier of 1-D parameters.
              Defaults to 0.
            - ``custom_keys`` (dict, optional): ``{substring: dict(lr_mult=..., decay_mult=...)}``;
              a parameter whose full name contains the substring (the longest matching one
              wins) has its decayed learning rate multiplied by ``lr_mult`` and the weight
              decay ``weight_decay * decay_mult`` (both default to 1), whatever the rules
              above say.

            Any other key, mmengine's ``dwconv_decay_mult``, ``bias_lr_mult``,
            ``dcn_offset_lr_mult`` and ``bypass_duplicate`` included, is an error.

    Example:
        In a config of mmpretrain, mmdet or mmseg that imports ``dualformer_mm``:

        .. code-block:: python

            optim_wrapper = dict(
                constructor='LayerDecayOptimWrapperConstructor',
                optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
                paramwise_cfg=dict(layer_decay_rate=0.9))

        Built directly, on a model with a DualFormer-T backbone (12 depths):

        >>> import torch.nn as nn
        >>> from dualformer_mm import DualFormer
        >>> model = nn.Module()
        >>> model.backbone = DualFormer(arch='t')
        >>> model.head = nn.Linear(256, 10)
        >>> constructor = LayerDecayOptimWrapperConstructor(
        ...     dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        ...     dict(layer_decay_rate=0.5))
        >>> groups = constructor(model).optimizer.param_groups
        >>> stem = [g for g in groups if 'backbone.stem.0.conv.weight' in g['param_names']][0]
        >>> stem['layer_id'], stem['lr_scale'], stem['weight_decay']
        (0, 0.00048828125, 0.05)
        >>> top = [g for g in groups if 'head.bias' in g['param_names']][0]
        >>> top['layer_id'], top['lr'], top['weight_decay']
        (11, 0.001, 0.0)
        >>> top['param_names'][-3:]
        ['backbone.norm3.weight', 'backbone.norm3.bias', 'head.bias']
    """

    def _validate_cfg(self) -> None:
        if self.base_lr is None:
            raise ValueError('LayerDecayOptimWrapperConstructor needs optimizer.lr, the '
                             'learning rate at the top depth')
        if self.base_wd is None:
            # Without it, every group would get the optimizer's own default (AdamW: 0.01),
            # 1-D parameters included.
            raise ValueError('LayerDecayOptimWrapperConstructor needs optimizer.weight_decay, '
                             'the weight decay that the decay multipliers scale (0 for none)')
        super()._validate_cfg()
        cfg = self.paramwise_cfg
        unknown = sorted(set(cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(
                f'LayerDecayOptimWrapperConstructor: paramwise_cfg keys {unknown} are not '
                f'supported; accepted: {list(PARAMWISE_KEYS)}')
        if 'layer_decay_rate' not in cfg:
            raise ValueError('LayerDecayOptimWrapperConstructor needs '
                             'paramwise_cfg.layer_decay_rate, a float in (0, 1]')
        rate = cfg['layer_decay_rate']
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be a float in (0, 1], '
                             f'got {rate!r}')
        for key in ('norm_decay_mult', 'bias_decay_mult', 'flat_decay_mult'):
            value = cfg.get(key)
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f'paramwise_cfg.{key} must be a number >= 0, got {value!r}')
        for key, options in cfg.get('custom_keys', {}).items():
            if not isinstance(options, dict) or set(options) - set(CUSTOM_KEY_OPTIONS):
                raise ValueError(
                    f'paramwise_cfg.custom_keys[{key!r}] must be a dict with keys among '
                    f'{list(CUSTOM_KEY_OPTIONS)}, got {options!r}')

    def add_params(self, params: List[Dict], module: nn.Module, prefix: str = '',
                   **kwargs) -> None:
        """Append the parameter groups of ``module``, the model, to ``params``.

        Args:
            params (list[dict]): The list of parameter groups, extended in place.
            module (nn.Module): The model (unwrapped from DDP by ``__call__``).
            prefix (str): Must be ``''``: the groups are made for the whole model at once.
        """
        if prefix:
            raise ValueError('LayerDecayOptimWrapperConstructor.add_params takes the whole '
                             f"model, with prefix='', got prefix={prefix!r}")
        layer_depth = _layer_depth_function(module)
        cfg = self.paramwise_cfg
        rate = float(cfg['layer_decay_rate'])
        custom_keys = cfg.get('custom_keys', {})
        # The longest key first, then alphabetical: mmengine's order of precedence.
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        groups: Dict[Tuple, Dict] = {}
        for module_name, owner in module.named_modules():
            for name, param in owner.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                full_name = f'{module_name}.{name}' if module_name else name
                depth, num_layers = layer_depth(full_name)
                lr_mult, decay_mult = self._multipliers(full_name, name, param, owner,
                                                        sorted_keys)
                key = (depth, lr_mult, decay_mult)
                if key not in groups:
                    scale = rate**(num_layers - 1 - depth)
                    groups[key] = dict(params=[], param_names=[], layer_id=depth,
                                       lr_scale=scale, lr=self.base_lr * scale * lr_mult,
                                       weight_decay=self.base_wd * decay_mult)
                groups[key]['params'].append(param)
                groups[key]['param_names'].append(full_name)
        params.extend(groups.values())
        for group in groups.values():
            print_log(f"layer {group['layer_id']}: lr={group['lr']:.3g}, weight_decay="
                      f"{group['weight_decay']:.3g}: {', '.join(group['param_names'])}",
                      logger='current', level=logging.DEBUG)

    def _multipliers(self, full_name: str, name: str, param: nn.Parameter, owner: nn.Module,
                     sorted_keys: List[str]) -> Tuple[float, float]:
        """``(lr_mult, decay_mult)`` of one parameter."""
        cfg = self.paramwise_cfg
        for key in sorted_keys:
            if key in full_name:
                options = cfg['custom_keys'][key]
                return float(options.get('lr_mult', 1.)), float(options.get('decay_mult', 1.))
        if isinstance(owner, _NORMS) and cfg.get('norm_decay_mult') is not None:
            return 1., float(cfg['norm_decay_mult'])
        if name == 'bias' and cfg.get('bias_decay_mult') is not None:
            return 1., float(cfg['bias_decay_mult'])
        if param.ndim == 1:
            return 1., float(cfg.get('flat_decay_mult', 0.))
        return 1., 1.


def _layer_depth_function(model: nn.Module) -> Callable[[str], Tuple[int, int]]:
    """``param_name -> (depth, num_layers)`` for the parameters of ``model``."""
    backbone: Optional[nn.Module] = getattr(model, 'backbone', None)
    if isinstance(backbone, nn.Module):
        if not callable(getattr(backbone, 'get_layer_depth', None)):
            raise NotImplementedError(
                f'LayerDecayOptimWrapperConstructor: the backbone {type(backbone).__name__} of '
                f'{type(model).__name__} has no get_layer_depth(param_name, prefix) method, '
                'which gives each parameter its depth; DualFormer and mmpretrain\'s '
                'transformer backbones have one')
        if callable(getattr(model, 'get_layer_depth', None)):
            return model.get_layer_depth

        def backbone_depth(param_name: str) -> Tuple[int, int]:
            depth, num_layers = backbone.get_layer_depth(param_name, 'backbone.')
            if not param_name.startswith('backbone.'):
                depth = num_layers - 1  # neck, heads
            return depth, num_layers

        return backbone_depth
    if callable(getattr(model, 'get_layer_depth', None)):
        return model.get_layer_depth
    raise NotImplementedError(
        f'LayerDecayOptimWrapperConstructor: {type(model).__name__} has neither a backbone '
        'nor a get_layer_depth(param_name) method to give each parameter its depth')
