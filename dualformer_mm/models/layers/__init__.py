# Copyright (c) dualformer-mm contributors.
from .norm import LayerNorm2d, build_norm2d
from .sync_bn import CPUSyncBatchNorm

__all__ = ['CPUSyncBatchNorm', 'LayerNorm2d', 'build_norm2d']
