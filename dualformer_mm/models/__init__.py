from .backbones import DualAttentionBlock, DualFormer
from .layers import CPUSyncBatchNorm
from .utils import AttentionConfig, BlockConfig, MBConv, PartitionAttention

__all__ = [
    'DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv', 'AttentionConfig',
    'BlockConfig', 'CPUSyncBatchNorm'
]
