"""Parameters and FLOPs of the four ImageNet classifiers match Table 1 within 2% and are the
README's cost table, and the cost of each ablation switch is the one docs/architecture.md
gives."""
import os.path as osp
import re

import pytest

from dualformer_mm import DualFormer
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
    # The README's table, as tools/analysis/get_flops.py --paper prints it: ours / Table 1.
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        row = re.search(rf'^\| {arch} \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \|$',
                        f.read(), re.MULTILINE)
    assert row, f'README.md has no cost row for {arch!r}'
    assert row.group(1, 3) == (f'{params / 1e6:.2f}', f'{flops / 1e9:.2f}')
    assert tuple(map(float, row.group(2, 4))) == (paper_params, paper_flops)


# What each switch changes in DualFormer-XS (Table 5's model) at 224x224: parameters and
# FLOPs, as docs/architecture.md ("Options of the blocks, and the ablation switches") gives
# them in M and G. The backbone alone: the classifier's head is the same for every switch.
XS_SWITCH_COSTS = {
    'serial': (dict(block_cfg=dict(mode='serial')), 2389216, 382694514),
    'pointwise': (dict(block_cfg=dict(local_branch='pointwise')), -13200, -4889808),
    'none': (dict(block_cfg=dict(local_branch='none')), 1636608, 226203410),
    'intra only': (dict(attn_cfg=dict(use_inter=False)), -182938, -25474816),
    'inter only': (dict(attn_cfg=dict(use_intra=False)), -180352, -25395328),
    'kmeans': (dict(attn_cfg=dict(partition='kmeans')), 0, -543390),
    'token': (dict(attn_cfg=dict(intra='token')), 0, 0),
    'joint': (dict(attn_cfg=dict(inter_importance='joint')), 17542, 0),
}


@pytest.fixture(scope='module')
def xs_cost():
    return count_complexity(DualFormer(arch='xs'))


@pytest.mark.parametrize('name', XS_SWITCH_COSTS)
def test_switch_costs_of_dualformer_xs(name, xs_cost):
    kwargs, params, flops = XS_SWITCH_COSTS[name]
    got = count_complexity(DualFormer(arch='xs', **kwargs))
    assert (got[0] - xs_cost[0], got[1] - xs_cost[1]) == (params, flops)
