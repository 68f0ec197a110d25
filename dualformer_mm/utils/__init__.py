from .checkpoint import allow_mmengine_checkpoints
from .complexity import PAPER_TABLE1, build_model_from_cfg, count_complexity
from .toolbox import TOOLBOXES, config_toolbox, require_toolbox_config

__all__ = ['PAPER_TABLE1', 'TOOLBOXES', 'allow_mmengine_checkpoints', 'build_model_from_cfg',
           'config_toolbox', 'count_complexity', 'require_toolbox_config']
