"""DualFormer builds from mmpretrain, mmdet and mmseg configs through custom_imports."""
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Each snippet runs in a fresh interpreter that never imports dualformer_mm itself: only the
# config's custom_imports does, as in a user's training run.
BUILD_FROM_CONFIG = textwrap.dedent('''
    import sys, torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(sys.argv[1])
    assert 'dualformer_mm' in sys.modules, 'custom_imports did not import dualformer_mm'
    init_default_scope(cfg.default_scope)
    registry = __import__(cfg.default_scope + '.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)
    backbone = getattr(model, 'backbone', model)
    assert type(backbone).__name__ == 'DualFormer', type(backbone)
    outs = backbone.eval()(torch.rand(1, 3, 64, 64))
    print('channels', [o.shape[1] for o in outs])
''')


@pytest.mark.parametrize('config,channels', [
    ('configs/mmpretrain/dualformer_t_in1k.py', [320]),
    ('configs/mmdet/mask_rcnn_dualformer_t_1x.py', [64, 128, 256, 320]),
    ('configs/mmseg/upernet_dualformer_t_ade20k.py', [64, 128, 256, 320]),
], ids=['mmpretrain', 'mmdet', 'mmseg'])
def test_config_builds_in_its_toolbox(config, channels):
    """A real config of each toolbox builds its whole model in that toolbox's registry, with
    DualFormer registered only by the config's custom_imports."""
    result = subprocess.run([sys.executable, '-c', BUILD_FROM_CONFIG, osp.join(ROOT, config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'channels {channels}' in result.stdout


def test_import_needs_no_toolbox():
    """``import dualformer_mm`` works with none of mmpretrain, mmdet, mmseg importable."""
    code = textwrap.dedent('''
        import sys
        for name in ('mmpretrain', 'mmdet', 'mmseg'):
            sys.modules[name] = None  # makes any import of it fail
        import dualformer_mm
        from mmengine.registry import MODELS
        assert MODELS.get('DualFormer') is dualformer_mm.DualFormer
        print('ok')
    ''')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-3000:]


def test_detector_roi_features_match_nchw_backbone():
    """Mask R-CNN's RoI features are the same with the channels-last backbone and an NCHW one.

    mmcv's CPU RoIAlign reads raw NCHW memory whatever the strides: with channels-last
    features it pooled garbage and the demo detector trained to a box AP of ~0.
    """
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(ROOT, 'configs/mmdet/mask_rcnn_dualformer_t_1x.py'))
    cfg.model.backbone.norm_cfg = dict(type='BN')  # one process: SyncBN's statistics are BN's
    models = []
    for channels_last in (True, False):
        cfg.model.backbone.channels_last = channels_last
        models.append(MODELS.build(cfg.model).eval())
    models[1].load_state_dict(models[0].state_dict())
    x = torch.rand(1, 3, 96, 128)
    rois = torch.tensor([[0., 4., 6., 60., 50.], [0., 30., 10., 120., 90.]])
    with torch.no_grad():
        pooled = [m.roi_head.bbox_roi_extractor(m.extract_feat(x)[:4], rois) for m in models]
    torch.testing.assert_close(pooled[0], pooled[1], rtol=1e-4, atol=1e-5)
