"""Device lists and model helpers shared by the tests."""
import pytest
import torch

# Every CUDA case carries the `cuda` marker: `pytest -m cuda` runs exactly them (what
# tools/gpu_check.sh does on a GPU machine), and they skip without a CUDA device.
CUDA = pytest.param('cuda', marks=[pytest.mark.cuda,
                                   pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason='needs a CUDA device')])
DEVICES = ['cpu', CUDA]
ARCHS = ['t', 'xs', 's', 'b']
# A DualFormer with one block per stage, for tests of code paths that every size runs alike
# (the sizes themselves are tested where they matter: Table 1's cost, the configs). Its last
# stage is wider than FFN.TILED_TRAINING_MAX_DIMS, as T's last two are, so a training step
# takes both the tiled and the plain FFN; two and three heads per stage in the later stages.
TINY_ARCH = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 144], num_heads=[1, 2, 2, 3],
                 mlp_ratios=[2, 2, 2, 2])
