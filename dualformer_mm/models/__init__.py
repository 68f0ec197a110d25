from .backbones import (AttentionConfig, BlockConfig, DualAttentionBlock, DualFormer, MBConv,
                        PartitionAttention)
from .layers import CPUSyncBatchNorm

__all__ = [
    'DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv', 'AttentionConfig',
    'BlockConfig', 'CPUSyncBatchNorm'
]
