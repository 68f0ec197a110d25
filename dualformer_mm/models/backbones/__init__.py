from .dualformer import DualAttentionBlock, DualFormer, MBConv, PartitionAttention

__all__ = ['DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv']
