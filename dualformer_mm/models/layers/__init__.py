# Copyright (c) dualformer-mm contributors.
from .checkpoint import checkpoint_keeping_statistics, keep_running_statistics
from .ffn import FFN, ffn_over_tiles, is_channels_last
from .norm import LayerNorm2d, build_norm2d
from .sync_bn import CPUSyncBatchNorm

__all__ = [
    'CPUSyncBatchNorm', 'FFN', 'LayerNorm2d', 'build_norm2d', 'checkpoint_keeping_statistics',
    'ffn_over_tiles', 'is_channels_last', 'keep_running_statistics'
]
