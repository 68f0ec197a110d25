from .dualformer import DualAttentionBlock, DualFormer

__all__ = ['DualFormer', 'DualAttentionBlock']
