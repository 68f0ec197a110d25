from .backbones import DualAttentionBlock, DualFormer, MBConv, PartitionAttention

__all__ = ['DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv']
