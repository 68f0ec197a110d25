from .backbones import DualAttentionBlock, DualFormer, MBConv, PartitionAttention
from .layers import CPUSyncBatchNorm

__all__ = ['DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv', 'CPUSyncBatchNorm']
