# Copyright (c) dualformer-mm contributors.
"""DualFormer (Dual Path Transformer with Partition Attention) for OpenMMLab 2.0.

Importing the package registers ``DualFormer`` in mmengine's root ``MODELS`` registry, which
the registries of mmpretrain, mmdet and mmseg search, so ``type='DualFormer'`` builds in all
three through ``custom_imports=dict(imports=['dualformer_mm'])``. None of the toolboxes is
needed to import it.
"""
from .version import __version__, version_info

# First after the version: refuses a torch older than the package supports, in one line.
from . import compat  # noqa: E402,F401
from .engine import RandomStateHook  # noqa: E402
from .models import (CPUSyncBatchNorm, DualAttentionBlock, DualFormer, MBConv,  # noqa: E402
                     PartitionAttention)
from .utils.checkpoint import allow_mmengine_checkpoints  # noqa: E402

# torch >= 2.6 loads checkpoints with weights_only=True; let mmengine's own checkpoints through
# (exact types only) so resume and load_from work without weakening that protection.
# DUALFORMER_SAFE_GLOBALS=0 leaves torch's allowlist untouched.
allow_mmengine_checkpoints()

# With timm installed, dualformer_t/_xs/_s/_b join its registry when timm is imported
# (dualformer_mm/integrations); timm is not imported here.
from .integrations import register_timm_models_on_import  # noqa: E402

register_timm_models_on_import()

__all__ = [
    'DualFormer', 'DualAttentionBlock', 'PartitionAttention', 'MBConv', 'CPUSyncBatchNorm',
    'RandomStateHook', '__version__', 'version_info'
]
