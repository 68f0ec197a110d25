from .partitions import (draw_partition_grid, draw_partitions, partition_capacity,
                         partition_figure, record_partitions)

__all__ = ['draw_partition_grid', 'draw_partitions', 'partition_capacity', 'partition_figure',
           'record_partitions']
