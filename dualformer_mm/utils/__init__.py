from .checkpoint import allow_mmengine_checkpoints
from .complexity import PAPER_TABLE1, build_model_from_cfg, count_complexity
from .datasets import (DatasetNotFoundError, MissingPath, check_dataset_paths,
                       find_missing_dataset_paths)
from .toolbox import TOOLBOXES, config_toolbox, require_toolbox_config

__all__ = ['PAPER_TABLE1', 'TOOLBOXES', 'DatasetNotFoundError', 'MissingPath',
           'allow_mmengine_checkpoints', 'build_model_from_cfg', 'check_dataset_paths',
           'config_toolbox', 'count_complexity', 'find_missing_dataset_paths',
           'require_toolbox_config']
