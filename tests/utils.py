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
