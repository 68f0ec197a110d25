# Copyright (c) dualformer-mm contributors.
"""Parameter and FLOP counts against the paper's Table 1 (section 3.3).

FLOPs are counted by ``mmengine.analysis`` (the fvcore convention: one multiply-add is one
FLOP), the way OpenMMLab's ``get_flops.py`` tools count them.
"""
from typing import Dict, Tuple, Union

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

# Table 1: parameters (M) and GFLOPs at 224x224 of the ImageNet classifiers.
PAPER_TABLE1: Dict[str, Tuple[float, float]] = {
    't': (5.5, 1.3),
    'xs': (10.5, 2.3),
    's': (22.6, 4.4),
    'b': (74.0, 15.8),
}


def build_model_from_cfg(cfg: Union[str, Config]) -> torch.nn.Module:
    """Build ``cfg.model`` in the toolbox named by the config's ``default_scope``."""
    if not isinstance(cfg, Config):
        cfg = Config.fromfile(cfg)
    scope = cfg.get('default_scope')
    if scope is None:
        return MODELS.build(cfg.model)
    # Building from the root registry under a default scope searches that toolbox's
    # registry first (mmengine's switch_scope_and_registry).
    with DefaultScope.overwrite_default_scope(scope):
        if DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance(f'dualformer-{scope}', scope_name=scope)
        return MODELS.build(cfg.model)


def count_complexity(model: torch.nn.Module, shape: Tuple[int, int] = (224, 224),
                     in_channels: int = 3) -> Tuple[int, int]:
    """Parameters and FLOPs of ``model`` on one image of ``shape``.

    Calls the model's plain tensor forward (``mode='tensor'`` for OpenMMLab models).

    Returns:
        tuple[int, int]: number of parameters, number of FLOPs.
    """
    model = model.eval()
    inputs = torch.rand(1, in_channels, *shape)
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs=(inputs, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        flops = analyzer.total()
    return parameter_count(model)[''], flops
