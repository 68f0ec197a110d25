"""A config for the wrong toolbox gets an error naming default_scope and what is accepted."""
import importlib.util
import os.path as osp
import sys

import pytest
from mmengine.config import Config

from dualformer_mm.utils import TOOLBOXES, config_toolbox
from dualformer_mm.utils import toolbox as toolbox_module

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {'mmpretrain': 'configs/mmpretrain/dualformer_t_in1k.py',
           'mmdet': 'configs/mmdet/mask_rcnn_dualformer_t_1x.py',
           'mmseg': 'configs/mmseg/upernet_dualformer_t_ade20k.py'}


@pytest.mark.parametrize('scope', list(TOOLBOXES))
def test_each_toolbox_accepts_only_its_configs(scope):
    cfg = Config(dict(default_scope=scope))
    assert config_toolbox(cfg, 'x.py') == scope
    assert config_toolbox(cfg, 'x.py', accepted=[scope]) == scope
    for other in set(TOOLBOXES) - {scope}:
        with pytest.raises(ValueError) as err:
            config_toolbox(cfg, 'x.py', accepted=[other], tool='the tool')
        message = str(err.value)
        assert f"default_scope='{scope}'" in message and f'({other})' in message
        assert TOOLBOXES[scope]['demo'] in message


def test_unknown_scope_and_missing_toolbox(monkeypatch):
    with pytest.raises(ValueError, match=r"default_scope must be one of .*got 'mmocr'"):
        config_toolbox(Config(dict(default_scope='mmocr')), 'x.py')
    with pytest.raises(ValueError, match='got None'):
        config_toolbox(Config(dict()), 'x.py')
    monkeypatch.setattr(toolbox_module.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(ImportError, match='pip install mmsegmentation==1.2.2'):
        config_toolbox(Config(dict(default_scope='mmseg')), 'x.py')


def _load_tool(relpath: str):
    spec = importlib.util.spec_from_file_location(osp.basename(relpath)[:-3],
                                                  osp.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_refuses_another_toolboxs_config(monkeypatch, capsys):
    demo = _load_tool('tools/demo/image_demo_cls.py')
    monkeypatch.setattr(sys, 'argv', ['image_demo_cls.py', 'missing.png',
                                      osp.join(ROOT, CONFIGS['mmdet'])])
    with pytest.raises(SystemExit) as exit_info:
        demo.main()
    assert exit_info.value.code == 2  # argparse's usage error, before any model is built
    assert ("is a detection config (default_scope='mmdet'), but image_demo_cls.py accepts "
            'classification (mmpretrain) configs; use tools/demo/image_demo_det.py'
            ) in capsys.readouterr().err


def test_train_refuses_a_config_of_no_known_toolbox(tmp_path, monkeypatch):
    cfg = tmp_path / 'other.py'
    cfg.write_text(f"_base_ = '{osp.join(ROOT, CONFIGS['mmseg'])}'\ndefault_scope = 'mmocr'\n")
    train = _load_tool('tools/train.py')
    monkeypatch.setattr(sys, 'argv', ['train.py', str(cfg)])
    with pytest.raises(ValueError, match=r"default_scope must be one of \('mmpretrain', "
                       r"'mmdet', 'mmseg'\)"):
        train.main()
