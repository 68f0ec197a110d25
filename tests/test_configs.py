"""Every config under configs/ builds, trains one step and predicts on a tiny input.

Configs are found by glob, so new ones are covered without editing this file. Each runs the
model's data preprocessor, a loss step (forward + backward) and a predict step at 64x64, and its
backbone channels must match what the neck or heads expect (paper sections 4.1-4.3 models).
A 3x detection config builds its 1x config's model (checked here), so only the 1x is built;
the XS, S and B models are full-size runs (``slow``), and every config's heads are checked
against its backbone's channels without building them.
The recipes' numbers and the configs' headers are held by tests/test_recipes.py, the real
training pipelines (the 3x multi-scale one too) by tests/test_pipelines.py.
"""
import inspect
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

from dualformer_mm import DualFormer
from dualformer_mm.utils import build_model_from_cfg

from .utils import training_configs

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = training_configs()
# A 3x config differs from its 1x config in the schedule and the multi-scale pipeline only.
# The T and demo models train here in every run; the larger sizes are full-size runs (slow).
BUILT = [pytest.param(p, marks=[] if re.search(r'_t_|/demo/', p) else [pytest.mark.slow],
                      id=osp.relpath(p, ROOT))
         for p in CONFIGS if not p.endswith('_3x.py')]
SIZE = 64


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


def _out_channels(cfg: Config) -> list:
    """The channels of the backbone's outputs, from its arch and out_indices."""
    backbone = cfg.model.backbone
    arch = backbone.arch
    channels = DualFormer.arch_zoo[arch]['channels'] if isinstance(arch, str) else \
        arch['channels']
    out_indices = backbone.get(
        'out_indices', inspect.signature(DualFormer).parameters['out_indices'].default)
    return [channels[i] for i in out_indices]


def _check_channels(cfg: Config) -> None:
    """Backbone outputs feed the neck (mmdet), decode/aux heads (mmseg) or the head (cls)."""
    outs = _out_channels(cfg)
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


@pytest.mark.parametrize('path', [p for p in CONFIGS if p.endswith('_3x.py')], ids=_rel)
def test_3x_config_builds_the_1x_model(path):
    one_x = Config.fromfile(path.replace('_3x.py', '_1x.py'))
    three_x = Config.fromfile(path)
    assert three_x.model == one_x.model
    assert three_x.default_scope == one_x.default_scope == 'mmdet'


@pytest.mark.parametrize('path', [p for p in CONFIGS if not p.endswith('_3x.py')], ids=_rel)
def test_heads_take_the_backbones_channels(path):
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.type == 'DualFormer'
    _check_channels(cfg)


@pytest.mark.parametrize('path', BUILT)
def test_config_builds_trains_and_predicts(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope in ('mmpretrain', 'mmdet', 'mmseg'), cfg.default_scope
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
    assert [backbone.channels[i] for i in backbone.out_indices] == _out_channels(cfg)

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
    for pred in preds:
        if cfg.default_scope == 'mmpretrain':
            # Softmax scores over the config's classes.
            assert pred.pred_score.shape == (num_classes, )
            torch.testing.assert_close(pred.pred_score.sum(), torch.tensor(1.0))
        elif cfg.default_scope == 'mmdet':
            instances = pred.pred_instances
            count = len(instances)
            assert count <= cfg.model.test_cfg.rcnn.max_per_img
            assert instances.bboxes.shape == (count, 4) and instances.masks.shape == (
                count, SIZE, SIZE)
            # Boxes in the image (rescaled to the input size), scores sorted, known labels.
            assert ((instances.bboxes >= 0) & (instances.bboxes <= SIZE)).all()
            assert (instances.scores[:-1] >= instances.scores[1:]).all()
            assert ((instances.labels >= 0) & (instances.labels < num_classes)).all()
        else:
            seg = pred.pred_sem_seg.data
            assert seg.shape == (1, SIZE, SIZE)
            assert int(seg.min()) >= 0 and int(seg.max()) < num_classes
