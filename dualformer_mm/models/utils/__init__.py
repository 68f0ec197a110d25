# Copyright (c) dualformer-mm contributors.
"""The parts of DualFormer's blocks, each in its own file: the block and attention options
(``options.py``), Multi-Head Partition Attention (``partition_attention.py``) and the
convolutions (``mbconv.py``). The backbone that assembles them is
``models/backbones/dualformer.py``; performance mechanics are in ``models/layers``."""
from .mbconv import MBConv, conv_norm_act
from .options import AttentionConfig, BlockConfig
from .partition_attention import PartitionAttention

__all__ = ['AttentionConfig', 'BlockConfig', 'MBConv', 'PartitionAttention', 'conv_norm_act']
