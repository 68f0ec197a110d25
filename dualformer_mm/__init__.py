# Copyright (c) dualformer-mm contributors.
"""DualFormer (Dual Path Transformer with Partition Attention) for OpenMMLab 2.0.

Importing the package registers ``DualFormer`` in mmengine's root ``MODELS`` registry, which
the registries of mmpretrain, mmdet and mmseg search, so ``type='DualFormer'`` builds in all
three through ``custom_imports=dict(imports=['dualformer_mm'])``. None of the toolboxes is
needed to import it.
"""
__version__ = '0.1.0'

from .models import DualAttentionBlock, DualFormer, MBConv, PartitionAttention  # noqa: E402

__all__ = ['DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv', '__version__']
