"""Device lists and model helpers shared by the tests."""
import pytest
import torch

CUDA = pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason='needs a CUDA device'))
DEVICES = ['cpu', CUDA]
ARCHS = ['t', 'xs', 's', 'b']
