"""A missing dataset ends tools/train.py and tools/test.py in one line, before any model.

``dualformer_mm.utils.datasets`` walks the dataloaders' dataset configs (and wrappers) and the
evaluators' files; the tools call it first. Checked on the real configs of the three
toolboxes, from a directory without ``data/``, and on generated data in the real layouts,
which must pass.
"""
import doctest
import importlib.util
import os.path as osp
import sys

import pytest
from mmengine.config import Config

import dualformer_mm.utils.datasets as datasets_module
from dualformer_mm.utils import (DatasetNotFoundError, check_dataset_paths,
                                 find_missing_dataset_paths)

from .test_tools import make_ade20k, make_coco, make_imagenet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'mmpretrain': 'configs/mmpretrain/dualformer_t_in1k.py',
    'mmdet': 'configs/mmdet/mask_rcnn_dualformer_t_1x.py',
    'mmdet-3x': 'configs/mmdet/mask_rcnn_dualformer_t_3x.py',
    'mmseg': 'configs/mmseg/upernet_dualformer_t_ade20k.py',
}
TRAIN_VAL = ('train_dataloader', 'val_dataloader')
# What the line says for each real config in a directory without data/.
EXPECTED = {
    'mmpretrain': ('error: ImageNet data not found: data/imagenet does not exist '
                   '(train_dataloader.dataset.data_root); point the config at your copy with '
                   '--cfg-options train_dataloader.dataset.data_root=DIR '
                   'val_dataloader.dataset.data_root=DIR'),
    'mmdet': ('error: COCO data not found: data/coco/ does not exist '
              '(train_dataloader.dataset.data_root); point the config at your copy with '
              '--cfg-options train_dataloader.dataset.data_root=DIR '
              'val_dataloader.dataset.data_root=DIR '
              'val_evaluator.ann_file=DIR/annotations/instances_val2017.json'),
    'mmseg': ('error: ADE20K data not found: data/ade/ADEChallengeData2016 does not exist '
              '(train_dataloader.dataset.data_root); point the config at your copy with '
              '--cfg-options train_dataloader.dataset.data_root=DIR '
              'val_dataloader.dataset.data_root=DIR'),
}


def _config(name: str) -> Config:
    return Config.fromfile(osp.join(ROOT, CONFIGS[name]))


def test_docstring_examples():
    result = doctest.testmod(datasets_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize('name', ['mmpretrain', 'mmdet', 'mmseg'])
def test_real_config_without_data_names_path_and_keys(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as error:
        check_dataset_paths(_config(name), TRAIN_VAL)
    assert 'error: ' + str(error.value) == EXPECTED[name]
    assert '\n' not in str(error.value)


def _point_at(cfg: Config, root: str) -> None:
    """What the line tells the user to do, for every dataloader and the COCO evaluators."""
    suffix = '/' if cfg.default_scope == 'mmdet' else ''
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].dataset.data_root = root + suffix
    for key in ('val_evaluator', 'test_evaluator'):
        if 'ann_file' in cfg[key]:
            cfg[key].ann_file = osp.join(root, 'annotations/instances_val2017.json')


@pytest.mark.parametrize('name,make', [('mmpretrain', make_imagenet), ('mmdet', make_coco),
                                       ('mmdet-3x', make_coco), ('mmseg', make_ade20k)])
def test_generated_data_in_the_real_layout_passes(name, make, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(name)
    root = str(make(tmp_path / 'data'))
    # COCO names its splits train2017/val2017 as the real one; the layout check reads them.
    _point_at(cfg, root)
    check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader', 'test_dataloader'))


def test_missing_file_under_an_existing_root(tmp_path):
    cfg = _config('mmdet')
    root = make_coco(tmp_path / 'coco')
    _point_at(cfg, str(root))
    (root / 'annotations' / 'instances_train2017.json').unlink()
    (root / 'val2017').rename(root / 'validation')
    missing = find_missing_dataset_paths(cfg, TRAIN_VAL)
    assert [(m.key, m.path) for m in missing] == [
        ('train_dataloader.dataset.ann_file',
         f'{root}/annotations/instances_train2017.json'),
        ('val_dataloader.dataset.data_prefix.img', f'{root}/val2017/')]
    with pytest.raises(DatasetNotFoundError, match=(
            r'^COCO data not found: \S+/annotations/instances_train2017.json does not exist '
            r'\(train_dataloader.dataset.ann_file under train_dataloader.dataset.data_root\); '
            r'point the config at your copy with --cfg-options '
            r'train_dataloader.dataset.data_root=DIR val_dataloader.dataset.data_root=DIR$')):
        check_dataset_paths(cfg, TRAIN_VAL)


def test_wrappers_absolute_paths_and_remote_paths(tmp_path):
    existing = tmp_path / 'ade'
    (existing / 'images').mkdir(parents=True)
    ann = tmp_path / 'abs.json'
    ann.write_text('{}')
    cfg = dict(
        train_dataloader=dict(dataset=dict(type='ConcatDataset', datasets=[
            dict(type='RepeatDataset', times=2, dataset=dict(
                type='ADE20KDataset', data_root=str(existing),
                data_prefix=dict(img_path='images', seg_map_path='annotations'))),
            dict(type='ClassBalancedDataset', oversample_thr=0.1, dataset=dict(
                type='CocoDataset', data_root=str(existing), ann_file=str(ann))),
            dict(type='CocoDataset', data_root='s3://bucket/coco/', ann_file='a.json'),
            dict(type='CocoDataset', data_root='', ann_file='no/such.json'),
        ])),
        val_dataloader=None)
    missing = find_missing_dataset_paths(cfg, TRAIN_VAL)
    assert [(m.key, m.path, m.suggestion) for m in missing] == [
        ('train_dataloader.dataset.datasets.0.dataset.data_prefix.seg_map_path',
         f'{existing}/annotations',
         'train_dataloader.dataset.datasets.0.dataset.data_root=DIR'),
        ('train_dataloader.dataset.datasets.3.ann_file', 'no/such.json',
         'train_dataloader.dataset.datasets.3.ann_file=FILE')]


def test_test_tool_checks_only_the_test_dataloader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config('mmdet')
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'nowhere')
    root = make_coco(tmp_path / 'coco')
    cfg.test_dataloader.dataset.data_root = f'{root}/'
    cfg.test_evaluator.ann_file = f'{root}/annotations/instances_val2017.json'
    check_dataset_paths(cfg, ('test_dataloader', ))
    with pytest.raises(DatasetNotFoundError, match='nowhere does not exist'):
        check_dataset_paths(cfg, TRAIN_VAL)


def _load_tool(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(f'{name}_tool',
                                                  osp.join(ROOT, 'tools', f'{name}.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize('name', ['mmpretrain', 'mmdet', 'mmseg'])
def test_train_without_data_exits_with_one_line(name, tmp_path, monkeypatch, capsys):
    """tools/train.py from a directory without data/: the line, nothing built.

    The exit code is the line: Python prints it alone on stderr and exits with status 1.
    """
    tool = _load_tool('train', monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['train.py', osp.join(ROOT, CONFIGS[name])])
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    assert exit_.value.code == EXPECTED[name]
    # Exit before the Runner: no work directory, no model (its init warning), no log.
    assert not (tmp_path / 'work_dirs').exists()
    # Nothing else was printed: no model (its init warning), no second copy of the line.
    out = capsys.readouterr()
    assert 'checkpoint=None' not in out.out + out.err
    assert 'data not found' not in out.out + out.err


def test_test_tool_without_data_exits_with_one_line(tmp_path, monkeypatch):
    """tools/test.py checks only its test_dataloader."""
    tool = _load_tool('test', monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['test.py', osp.join(ROOT, CONFIGS['mmseg']), 'model.pth'])
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    # A string exit code: Python prints it on stderr and exits with status 1.
    assert exit_.value.code == (
        'error: ADE20K data not found: data/ade/ADEChallengeData2016 does not exist '
        '(test_dataloader.dataset.data_root); point the config at your copy with '
        '--cfg-options test_dataloader.dataset.data_root=DIR')
