from .checkpoint import allow_mmengine_checkpoints
from .complexity import PAPER_TABLE1, build_model_from_cfg, count_complexity

__all__ = ['PAPER_TABLE1', 'allow_mmengine_checkpoints', 'build_model_from_cfg',
           'count_complexity']
