from .dualformer import (AttentionConfig, BlockConfig, DualAttentionBlock, DualFormer, MBConv,
                         PartitionAttention)

__all__ = [
    'DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv', 'AttentionConfig',
    'BlockConfig'
]
