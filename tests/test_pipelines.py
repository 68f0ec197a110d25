"""The real training pipelines, run on generated data in the real dataset layouts.

For each distinct training pipeline of the configs (ImageNet, COCO 1x, COCO 3x multi-scale,
ADE20K) the dataset is built from the config's own ``train_dataloader.dataset``, with only
``data_root`` pointed at generated data, and a few samples are drawn to check what each
stated transform does. The classifier then trains one step on a collated batch of those real
224x224 samples, through the config's own data preprocessor (Mixup/CutMix) and optimizer.
(tests/test_tools.py trains every toolbox end to end, but with small replacement pipelines.)
"""
import copy
import math
import os.path as osp
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, DefaultScope

from dualformer_mm.utils import build_model_from_cfg

from .test_recipes import MULTI_SCALES
from .test_tools import make_ade20k, make_coco, make_imagenet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHORT_SIDES = {short for _, short in MULTI_SCALES}  # 480, 512, ..., 800


def _config(rel: str) -> Config:
    return Config.fromfile(osp.join(ROOT, rel))


def _build(registry, cfg: dict, scope: str):
    """Build ``cfg`` from ``registry`` with ``scope`` as the default scope (other tests may
    have left another toolbox's scope as the current one)."""
    with DefaultScope.overwrite_default_scope(scope):
        if DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance(f'dualformer-{scope}', scope_name=scope)
        return registry.build(cfg)


def _dataset(cfg: Config, data_root: str):
    """The config's training dataset, pipeline untouched, reading ``data_root``."""
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    dataset_cfg.data_root = data_root
    return _build(DATASETS, dataset_cfg, cfg.default_scope)


def _draw(dataset, count: int, seed: int = 0):
    """``count`` samples, cycling over the dataset, with seeded augmentations."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return [dataset[i % len(dataset)] for i in range(count)]


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    cfg = _config('configs/mmpretrain/dualformer_t_in1k.py')
    root = make_imagenet(tmp_path_factory.mktemp('imagenet') / 'imagenet', num=4, size=96)
    return cfg, _dataset(cfg, str(root))


def test_imagenet_pipeline_crops_224_and_flips(imagenet):
    _, dataset = imagenet
    assert len(dataset) == 4
    samples = _draw(dataset, 12)
    flips = set()
    for sample in samples:
        # RandomResizedCrop to the paper's 224x224 (Table 2), from 96x96 images.
        assert sample['inputs'].shape == (3, 224, 224)
        assert sample['inputs'].dtype == torch.uint8
        assert sample['data_samples'].img_shape[:2] == (224, 224)
        assert sample['data_samples'].ori_shape[:2] == (96, 96)
        flips.add(sample['data_samples'].flip)
    # RandomFlip with p=0.5: both outcomes in 12 draws.
    assert flips == {True, False}
    # The same image twice: random crops, flips, RandAugment and erasing make them differ.
    assert not torch.equal(samples[0]['inputs'], samples[4]['inputs'])


def test_imagenet_batch_mixes_labels_and_trains_one_step(imagenet):
    """Mixup/CutMix of the config's train_cfg, then one optimizer step of DualFormer-T."""
    cfg, dataset = imagenet
    samples = _draw(dataset, 4)
    model = build_model_from_cfg(cfg)
    model.train()
    torch.manual_seed(1)
    data = model.data_preprocessor(pseudo_collate(copy.deepcopy(samples)), True)
    assert data['inputs'].shape == (4, 3, 224, 224)
    scores = torch.stack([s.gt_score for s in data['data_samples']])
    assert scores.shape == (4, 1000)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(4))
    # Four different labels: a mixed sample holds two labels with weights lam and 1 - lam.
    assert ((scores > 0).sum(dim=1) == 2).any(), scores[scores > 0]

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    # The recipe's no-decay groups: every norm and bias parameter has weight decay 0.
    decays = {id(p): g['weight_decay'] for g in optim_wrapper.param_groups for p in g['params']}
    for name, param in model.named_parameters():
        if param.ndim == 1:
            assert decays[id(param)] == 0.0, name
    assert max(decays.values()) == cfg.optim_wrapper.optimizer.weight_decay
    before = model.backbone.stem[0].conv.weight.detach().clone()
    # Two of the real 224x224 samples: the step costs seconds on a CPU.
    log = model.train_step(pseudo_collate(samples[:2]), optim_wrapper)
    loss = float(log['loss'].detach())
    assert math.isfinite(loss) and loss > 0
    assert not torch.equal(before, model.backbone.stem[0].conv.weight)


def _coco(tmp_path_factory, rel: str):
    cfg = _config(rel)
    root = make_coco(tmp_path_factory.mktemp('coco') / 'coco', num=4, size=96)
    return cfg, _dataset(cfg, f'{root}/')


def _check_instances(sample) -> None:
    """Boxes lie in the image and masks have its size: they went through every transform."""
    data_sample = sample['data_samples']
    height, width = data_sample.img_shape
    assert sample['inputs'].shape == (3, height, width)
    instances = data_sample.gt_instances
    boxes = instances.bboxes.tensor if hasattr(instances.bboxes, 'tensor') else instances.bboxes
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all()
    assert (instances.masks.height, instances.masks.width) == (height, width)
    assert len(instances.masks) == len(boxes) == len(instances.labels)


def test_coco_1x_pipeline_resizes_to_800_and_flips(tmp_path_factory):
    _, dataset = _coco(tmp_path_factory, 'configs/mmdet/mask_rcnn_dualformer_t_1x.py')
    flips = set()
    for sample in _draw(dataset, 8):
        _check_instances(sample)
        # 96x96 images: the short side goes to 800 (the long side limit 1333 does not bind).
        assert sample['data_samples'].img_shape == (800, 800)
        assert len(sample['data_samples'].gt_instances) == 2  # nothing is cropped away
        flips.add(sample['data_samples'].flip)
    assert flips == {True, False}


def test_coco_3x_multiscale_pipeline_runs_both_branches(tmp_path_factory):
    """Short side in 480..800 (step 32), long side <= 1333; the crop branch also runs."""
    _, dataset = _coco(tmp_path_factory, 'configs/mmdet/mask_rcnn_dualformer_t_3x.py')
    shorts, branches, flips = set(), set(), set()
    for sample in _draw(dataset, 24):
        _check_instances(sample)
        height, width = sample['data_samples'].img_shape
        short, long = min(height, width), max(height, width)
        assert short in SHORT_SIDES and long <= 1333, (height, width)
        shorts.add(short)
        # A square image stays square through the resize-only branch; the crop branch cuts
        # a 384..600 x 384..600 window out of a 400/500/600 resize, which is not square.
        branches.add('resize' if height == width else 'crop')
        flips.add(sample['data_samples'].flip)
    assert branches == {'resize', 'crop'}
    assert len(shorts) >= 6, sorted(shorts)  # many of the 11 scales in 24 draws
    assert flips == {True, False}


def test_ade20k_pipeline_rescales_crops_512_and_flips(tmp_path_factory):
    cfg = _config('configs/mmseg/upernet_dualformer_t_ade20k.py')
    root = make_ade20k(tmp_path_factory.mktemp('ade') / 'ade', num=4, size=64)
    dataset = _dataset(cfg, str(root))
    samples = _draw(dataset, 8)
    flips, ratios = set(), []
    for sample in samples:
        data_sample = sample['data_samples']
        height, width = data_sample.img_shape
        # RandomResize: 64 px -> 512 x ratio, ratio in [0.5, 2]; then the 512x512 crop.
        ratio = data_sample.scale_factor[0] * 64 / 512
        assert 0.5 - 1e-6 <= ratio <= 2.0 + 1e-6, ratio
        ratios.append(ratio)
        resized = round(64 * data_sample.scale_factor[0])
        assert (height, width) == (min(512, resized), min(512, resized))
        assert sample['inputs'].shape == (3, height, width)
        labels = set(data_sample.gt_sem_seg.data.unique().tolist())
        # reduce_zero_label: ADE20K's 0 ("other") becomes 255, class k becomes k - 1.
        assert labels <= set(range(150)) | {255}, labels
        flips.add(data_sample.flip)
    assert min(ratios) < 1 < max(ratios)  # both sides of the crop size were drawn
    assert flips == {True, False}
    # The config's preprocessor pads every crop to 512x512 (ignored label 255 in the padding).
    from mmseg.registry import MODELS
    preprocessor = _build(MODELS, cfg.model.data_preprocessor, 'mmseg')
    small = [s for s in samples if s['data_samples'].img_shape[0] < 512][:1]
    data = preprocessor(pseudo_collate(small), True)
    assert data['inputs'].shape == (1, 3, 512, 512)
    padded = data['data_samples'][0].gt_sem_seg.data
    assert padded.shape == (1, 512, 512) and (padded[:, -1, -1] == 255).all()
