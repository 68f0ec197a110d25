# Copyright (c) dualformer-mm contributors.
"""Parameter and FLOP counts against the paper's Tables 1, 3 and 4 (sections 3.3, 4.2, 4.3).

FLOPs are counted by ``mmengine.analysis`` (the fvcore convention: one multiply-add is one
FLOP), the way OpenMMLab's ``get_flops.py`` tools count them: classifiers with their head,
detectors through their ``tensor`` forward (backbone, neck, RPN and RoI heads), segmentors
through their ``tensor`` forward (backbone and decode head at 1/4 resolution).
"""
from typing import Dict, Tuple, Union

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

from ..ops import FLOP_HANDLES

# Table 1: parameters (M) and GFLOPs at 224x224 of the ImageNet classifiers.
PAPER_TABLE1: Dict[str, Tuple[float, float]] = {
    't': (5.5, 1.3),
    'xs': (10.5, 2.3),
    's': (22.6, 4.4),
    'b': (74.0, 15.8),
}
# Table 3: parameters (M) and GFLOPs at 800x1280 of Mask R-CNN + FPN.
PAPER_TABLE3: Dict[str, Tuple[float, float]] = {
    't': (25, 208),
    'xs': (29, 219),
    's': (43, 258),
    'b': (95, 495),
}
# Table 4: parameters (M) and GFLOPs at 512x2048 of UperNet (only S and B are reported).
PAPER_TABLE4: Dict[str, Tuple[float, float]] = {
    's': (48, 922),
    'b': (104, 1150),
}


def build_model_from_cfg(cfg: Union[str, Config]) -> torch.nn.Module:
    """Build ``cfg.model`` in the toolbox named by the config's ``default_scope``."""
    if not isinstance(cfg, Config):
        cfg = Config.fromfile(cfg)
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in cfg.model:
        # mmpretrain configs keep it at the top level; the Runner moves it into the model.
        cfg = Config(cfg.to_dict())  # leave the caller's config alone
        cfg.model.data_preprocessor = cfg.data_preprocessor
    scope = cfg.get('default_scope')
    if scope is None:
        return MODELS.build(cfg.model)
    # Building from the root registry under a default scope searches that toolbox's
    # registry first (mmengine's switch_scope_and_registry).
    with DefaultScope.overwrite_default_scope(scope):
        if DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance(f'dualformer-{scope}', scope_name=scope)
        return MODELS.build(cfg.model)


class _TensorForward(torch.nn.Module):
    """Runs a model's ``tensor`` forward on an image batch, with image metas where needed."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor):
        if not hasattr(self.model, 'rpn_head'):
            return self.model(inputs)
        # Two-stage detectors turn RPN outputs into proposals, which needs each image's size.
        from mmdet.structures import DetDataSample
        size = tuple(inputs.shape[-2:])
        meta = dict(img_shape=size, ori_shape=size, pad_shape=size, batch_input_shape=size,
                    scale_factor=(1.0, 1.0))
        samples = [DetDataSample(metainfo=meta) for _ in range(inputs.shape[0])]
        return self.model(inputs, samples, mode='tensor')


def count_complexity(model: torch.nn.Module, shape: Tuple[int, int] = (224, 224),
                     in_channels: int = 3) -> Tuple[int, int]:
    """Parameters and FLOPs of ``model`` on one image of ``shape``.

    Calls the model's plain tensor forward (``mode='tensor'`` for OpenMMLab models; a
    two-stage detector also gets the image metas its RPN needs).

    Returns:
        tuple[int, int]: number of parameters, number of FLOPs.
    """
    model = model.eval()
    inputs = torch.rand(1, in_channels, *shape)
    with torch.no_grad():
        # Our ops' handles through mmengine's public per-analyzer API, so the count does not
        # rest on the import-time entries in mmengine's private default table.
        analyzer = FlopAnalyzer(_TensorForward(model), inputs=(inputs, ))
        analyzer.set_op_handle(**FLOP_HANDLES)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        flops = analyzer.total()
    return parameter_count(model)[''], flops
