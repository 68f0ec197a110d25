# Copyright (c) dualformer-mm contributors.
"""``tools/analysis/ablation.py``: the variant table builds, ``--variants`` parses or says what
is wrong, and a tiny experiment (two variants, one seed, three steps on 32x32 images) writes its
table, skips finished runs when run again, retrains exactly a removed run with the same result,
and refuses records of another budget.
"""
import doctest
import json
import os
import os.path as osp

import numpy as np
import pytest

from dualformer_mm.analysis.ablation import runner
from dualformer_mm.analysis.ablation import variants as variant_table
from dualformer_mm.demo.synthetic import CLASSES, make_classification
from tests.utils import load_script

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
COLUMNS = ['variant', 'backbone options', 'top-1 (%) mean', 'std', 'per seed', 'params (M)',
           'MFLOPs at 32', 'ms/step', 'time vs full', 'paper']
ROW_FIELDS = {'name', 'options', 'paper', 'paper_top1', 'seeds', 'top1', 'top1_mean',
              'top1_std', 'params', 'flops', 'ms_per_step', 'time_vs_full'}


@pytest.fixture(scope='module')
def tool():
    return load_script('tools/analysis/ablation.py')


@pytest.fixture(scope='module')
def variants():
    return variant_table


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('cls'))
    make_classification(root, np.random.RandomState(0), dict(train=8, val=8), size=32)
    return root


def test_every_builtin_variant_builds(variants):
    from dualformer_mm import DualFormer
    full = DualFormer(arch='t')
    for name, variant in variants.VARIANTS.items():
        variants.check_options(name, variant.options)
        model = DualFormer(arch='t', **variants.nest(variant.options))
        # Every variant but the full model changes the parsed options (no misspelt default).
        changed = (model.block_cfg, model.attn_cfg) != (full.block_cfg, full.attn_cfg)
        assert changed == (name != 'full'), name
    for set_name, members in variants.SETS.items():
        assert members[0] == 'full' and set(members) <= set(variants.VARIANTS), set_name


def test_builds_in_mmpretrain_whatever_the_default_scope(data_root):
    """A default scope of another toolbox left in the process (mmseg's, which has no
    ``CustomDataset``) does not change where the ablation builds its data and model."""
    import mmseg.models  # noqa: F401  (mmseg's registries exist)
    from mmengine.registry import DefaultScope
    budget = runner.Budget(img_size=32)
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = runner.build_dataset(data_root, 'train', budget, train=True)
        model = runner.build_classifier(budget, {}, len(CLASSES),
                                        osp.join(ROOT, 'configs/mmpretrain/dualformer_t_in1k.py'))
        assert DefaultScope.get_current_instance().scope_name == 'mmseg'
    assert type(dataset).__module__.startswith('mmpretrain.') and len(dataset) == 8
    assert type(model).__module__.startswith('mmpretrain.')
    assert model.head.num_classes == len(CLASSES)


def test_variant_spec_parsing(variants):
    parsed = variants.parse_variant('x:mode=serial, num_partitions=(4, 4, 2, 2),'
                                    'attn_cfg.use_inter=False')
    assert parsed['x'].options == {'block_cfg.mode': 'serial', 'num_partitions': (4, 4, 2, 2),
                                   'attn_cfg.use_inter': False}
    assert variants.nest(parsed['x'].options) == dict(
        block_cfg=dict(mode='serial'), num_partitions=(4, 4, 2, 2),
        attn_cfg=dict(use_inter=False))
    assert variants.parse_variant('serial')['serial'] == variants.VARIANTS['serial']
    with pytest.raises(variants.VariantError, match=r"unknown backbone option 'mdoe'; "
                       r"accepted: .*\bblock_cfg\.mode\b"):
        variants.parse_variant('x:mdoe=serial')
    with pytest.raises(variants.VariantError, match=r"unknown backbone option "
                       r"'attn_cfg\.mode'"):
        variants.parse_variant('x:attn_cfg.mode=serial')
    with pytest.raises(variants.VariantError, match=r"'mode' is not key=value"):
        variants.parse_variant('x:mode')
    with pytest.raises(variants.VariantError, match=r"'nope' is not a built-in variant"):
        variants.parse_variant('nope')
    with pytest.raises(variants.VariantError, match=r"'arch'"):
        variants.parse_variant('x:arch=s')  # the budget's --arch, not a variant option
    with pytest.raises(variants.VariantError, match='built-in variant'):
        variants.parse_variant('serial:mode=parallel')
    with pytest.raises(variants.VariantError, match=r"unknown set 'table7'; accepted: table5"):
        variants.select(['table7'], [])


def _args(data_root, work_dir, *extra):
    return [data_root, '--variants', 'full', 'serial', '--seeds', '0', '--steps', '3',
            '--batch-size', '4', '--img-size', '32', '--warmup-steps', '1',
            '--work-dir', work_dir, '--log-interval', '1', '--threads', '1', *extra]


def test_tiny_experiment_table_and_resume(tool, data_root, tmp_path, monkeypatch, capsys):
    work_dir = str(tmp_path / 'ablation')
    rows = tool.main(_args(data_root, work_dir))
    out = capsys.readouterr().out
    assert 'step 3/3' in out and '2 to train' in out

    assert [r['name'] for r in rows] == ['full', 'serial']
    with open(osp.join(work_dir, 'ablation.json')) as f:
        saved = json.load(f)
    assert saved['rows'] == json.loads(json.dumps(rows))
    assert {'command', 'budget', 'seeds', 'data', 'date', 'cpu', 'versions'} <= set(saved['meta'])
    assert saved['meta']['data']['classes'] == sorted(CLASSES)
    assert saved['meta']['budget']['steps'] == 3 and saved['meta']['seeds'] == [0]
    for row in saved['rows']:
        assert set(row) == ROW_FIELDS
        assert row['seeds'] == [0] and len(row['top1']) == 1 and row['top1_std'] is None
        assert 0 <= row['top1_mean'] <= 100 and row['top1_mean'] in (100 * k / 8
                                                                   for k in range(9))
        assert row['params'] > 1e6 and row['flops'] > 1e6 and row['ms_per_step'] > 0
    full, serial = saved['rows']
    assert full['time_vs_full'] == 1.0 and serial['options'] == {'block_cfg.mode': 'serial'}
    assert full['paper_top1'] == 81.5 and serial['paper_top1'] == 81.0
    assert full['params'] != serial['params']  # serial runs both paths on all channels

    with open(osp.join(work_dir, 'ablation.md')) as f:
        lines = f.read().splitlines()
    assert [c.strip() for c in lines[0].strip('|').split('|')] == COLUMNS
    assert [line.split('|')[1].strip() for line in lines[2:4]] == ['full', 'serial']
    assert lines[4] == '' and lines[5].startswith('Command: `python tools/analysis/ablation.py')

    # Run again: nothing is trained, the table is the same.
    def no_training(*args, **kwargs):
        raise AssertionError('a finished run was trained again')

    monkeypatch.setattr(tool, 'train_one', no_training)
    again = tool.main(_args(data_root, work_dir))
    assert '0 to train' in capsys.readouterr().out
    assert json.loads(json.dumps(again)) == saved['rows']

    # A killed experiment: the missing run, and only it, is trained, with the same result.
    record_path = osp.join(work_dir, 'runs', 'serial', 'seed0.json')
    with open(record_path) as f:
        before = json.load(f)
    os.remove(record_path)
    trained = []

    def counting(budget, options, seed, *args, **kwargs):
        trained.append((options, seed))
        return real_train_one(budget, options, seed, *args, **kwargs)

    real_train_one = runner.train_one
    monkeypatch.setattr(tool, 'train_one', counting)
    tool.main(_args(data_root, work_dir))
    assert trained == [({'block_cfg': {'mode': 'serial'}}, 0)]
    with open(record_path) as f:
        after = json.load(f)
    assert after['final_loss'] == pytest.approx(before['final_loss'], rel=1e-5)
    assert after['top1'] == before['top1']

    # Another budget in the same work dir is refused rather than mixed in.
    with pytest.raises(SystemExit, match=r'other settings \(budget'):
        tool.main(_args(data_root, work_dir, '--lr', '1e-3'))


def test_docstring_examples():
    import dualformer_mm.analysis.ablation as package
    for module in (package, runner, variant_table):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
