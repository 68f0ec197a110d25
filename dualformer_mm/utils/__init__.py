from .complexity import PAPER_TABLE1, build_model_from_cfg, count_complexity

__all__ = ['PAPER_TABLE1', 'build_model_from_cfg', 'count_complexity']
