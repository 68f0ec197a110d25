from .partitions import draw_partitions, record_partitions

__all__ = ['draw_partitions', 'record_partitions']
