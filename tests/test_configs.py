"""Every config under configs/ builds, trains one step and predicts on a tiny input.

Configs are found by glob, so new ones are covered without editing this file. Each runs the
model's data preprocessor, a loss step (forward + backward) and a predict step at 64x64, and its
backbone channels must match what the neck or heads expect (paper sections 4.1-4.3 models).
The recipes' numbers are held by tests/test_recipes.py, the real training pipelines by
tests/test_pipelines.py.
"""
import glob
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

from dualformer_mm.utils import build_model_from_cfg

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p.split(osp.sep))
SIZE = 64
SECTIONS = {'mmpretrain': '4.1', 'mmdet': '4.2', 'mmseg': '4.3'}


def _rel(path: str) -> str:
    return osp.relpath(path, ROOT)


def _inputs(scope: str, num_classes: int):
    """A batch of two 64x64 images with ground truth for the toolbox of ``scope``."""
    images = [torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8) for _ in range(2)]
    if scope == 'mmpretrain':
        from mmpretrain.structures import DataSample
        samples = [DataSample().set_gt_label(i % num_classes) for i in range(2)]
        return dict(inputs=images, data_samples=samples)
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch_size=2, image_shapes=(3, SIZE, SIZE), num_items=[2, 3],
                              num_classes=num_classes, with_mask=True)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                                             pad_shape=(SIZE, SIZE)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, SIZE, SIZE)))
        samples.append(sample)
    return dict(inputs=images, data_samples=samples)


def _check_channels(cfg: Config, backbone: torch.nn.Module) -> None:
    """Backbone outputs feed the neck (mmdet), decode/aux heads (mmseg) or the head (cls)."""
    outs = [backbone.channels[i] for i in backbone.out_indices]
    model = cfg.model
    if cfg.default_scope == 'mmdet':
        assert list(model.neck.in_channels) == outs
    elif cfg.default_scope == 'mmseg':
        head = model.decode_head
        assert [outs[i] for i in head.in_index] == list(head.in_channels)
        aux = model.get('auxiliary_head')
        if aux:
            assert outs[aux.in_index] == aux.in_channels
    else:
        assert model.head.in_channels == outs[-1]


def _num_classes(cfg: Config) -> int:
    model = cfg.model
    if cfg.default_scope == 'mmdet':
        return model.roi_head.bbox_head.num_classes
    if cfg.default_scope == 'mmseg':
        return model.decode_head.num_classes
    return model.head.num_classes


def test_configs_are_found():
    names = {_rel(p) for p in CONFIGS}
    for size in ('t', 'xs', 's', 'b'):
        assert f'configs/mmpretrain/dualformer_{size}_in1k.py' in names
        assert f'configs/mmdet/mask_rcnn_dualformer_{size}_1x.py' in names
        assert f'configs/mmdet/mask_rcnn_dualformer_{size}_3x.py' in names
        assert f'configs/mmseg/upernet_dualformer_{size}_ade20k.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=_rel)
def test_config_builds_trains_and_predicts(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope in ('mmpretrain', 'mmdet', 'mmseg'), cfg.default_scope
    with open(path) as f:
        first = f.readline()
    # Line 1 says what the config is, never that it reproduces the paper (no weights exist):
    # the paper's recipe (tests/test_recipes.py holds the wording and the figures quoted on
    # line 2), or for a demo what `make demo` trains.
    assert first.startswith('# ') and not first.lower().startswith('# reproduces'), first
    if osp.sep + 'demo' + osp.sep in path:
        assert first.startswith('# make demo: '), first
    else:
        section = SECTIONS[cfg.default_scope]
        assert first.rstrip().endswith(f"the paper's recipe (section {section})."), first
    if cfg.default_scope == 'mmseg':
        # Batches are padded to the 512x512 training crop; a 64x64 crop keeps the test fast.
        cfg.model.data_preprocessor.size = (SIZE, SIZE)
    if cfg.default_scope == 'mmdet':
        # Fewer proposals and RoIs than on COCO: the same code path at a fraction of the cost.
        cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        cfg.model.train_cfg.rcnn.sampler.num = 64
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
        cfg.model.test_cfg.rcnn.max_per_img = 20
    model = build_model_from_cfg(cfg)
    # The Runner does the same outside distributed runs.
    model = revert_sync_batchnorm(model)
    backbone = model.backbone
    assert type(backbone).__name__ == 'DualFormer'
    _check_channels(cfg, backbone)

    num_classes = _num_classes(cfg)
    data = _inputs(cfg.default_scope, num_classes)
    model.train()
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    loss, _ = model.parse_losses(losses)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    stem_grad = backbone.stem[0].conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(data, False), mode='predict')
    assert len(preds) == 2
    if cfg.default_scope == 'mmpretrain':
        assert preds[0].pred_score.shape == (num_classes, )
    elif cfg.default_scope == 'mmdet':
        instances = preds[0].pred_instances
        assert instances.bboxes.shape[1] == 4
        assert instances.masks.shape[1:] == (SIZE, SIZE)
    else:
        assert preds[0].pred_sem_seg.data.shape == (1, SIZE, SIZE)
        assert int(preds[0].pred_sem_seg.data.max()) < num_classes
