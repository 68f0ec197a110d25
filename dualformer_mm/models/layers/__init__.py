# Copyright (c) dualformer-mm contributors.
from .sync_bn import CPUSyncBatchNorm

__all__ = ['CPUSyncBatchNorm']
