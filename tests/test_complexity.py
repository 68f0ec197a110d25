"""Parameters and FLOPs of the four ImageNet classifiers match Table 1 within 2%."""
import os.path as osp

import pytest

from dualformer_mm.utils import PAPER_TABLE1, build_model_from_cfg, count_complexity
from tests.utils import ARCHS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.mark.parametrize('arch', ARCHS)
def test_params_and_flops_match_table1(arch):
    cfg = osp.join(ROOT, 'configs', 'mmpretrain', f'dualformer_{arch}_in1k.py')
    params, flops = count_complexity(build_model_from_cfg(cfg))
    paper_params, paper_flops = PAPER_TABLE1[arch]
    assert params / 1e6 == pytest.approx(paper_params, rel=0.02), (
        f'{arch}: {params / 1e6:.3f} M parameters, Table 1 says {paper_params} M')
    assert flops / 1e9 == pytest.approx(paper_flops, rel=0.02), (
        f'{arch}: {flops / 1e9:.3f} GFLOPs, Table 1 says {paper_flops}')
