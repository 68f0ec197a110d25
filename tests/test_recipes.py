"""Every recipe number of the paper (sections 4.1-4.3), held in every config that uses it.

``PAPER`` is one table of what the paper states, each with the sentence it comes from;
``CHOICES`` holds what we chose where the paper is silent or ambiguous, each with the file of
the work it follows (docs/recipes.md gives the reasons). Every entry is checked in every
non-demo config of its task, so a changed number fails with the paper's value (or the recorded
choice) in the message. Configs are only loaded (``Config.fromfile``), never built.
"""
import functools
import glob
import importlib.util
import inspect
import os.path as osp
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, List, Set, Tuple

import pytest
from mmengine.config import Config

from .utils import training_configs

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = training_configs(demo=False)
ALL_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
GPUS = 8  # "trained on 8 Tesla V100 GPUs" (sections 4.1, 4.2, 4.3)
SIZES = {'t': 'T', 'xs': 'XS', 's': 'S', 'b': 'B'}

# The paper's sentences, verbatim (ours: the exponent notation of the paper's text file).
S41_OPT = ('We adopt the AdamW [34] optimizer with an initial learning rate of 5x10^-4, '
           'momentum of 0.9, and weight decay of 5x10^-2.')
S41_BATCH = ('The batch size is 1024, and the default number of epochs is 300, trained on 8 '
             'Tesla V100 GPUs.')
S41_SCHED = ('we set the number of linear warm-up and cool-down epochs to 5 and 10, '
             'respectively. In other epochs, we decrease the learning rate with a cosine '
             'annealing schedule.')
S41_AUG = ('Following previous work [43], we use data augmentation techniques such as random '
           'flipping, mixup [62], and cutmix [61].')
S41_RES = 'These models are trained with 224x224 resolution. (Table 2 caption)'
S41_CROP = 'We report the Top-1 accuracy under the single crop setting'
S41_DATA = ('the ImageNet-1K dataset [12], which contains 1.2 million training images and 50,000 '
            'validation images with 1,000 semantic categories.')
S31_GAP = ('For image classification tasks, we use global average pooling from the last stage '
           'and feed it to the classification head. (section 3.1)')
S42_DATA = ('We conducted an evaluation of DualFormer on the COCO 2017 benchmark [30] for both '
            'object detection and instance segmentation tasks.')
S42_INIT = 'The backbone was pre-trained on ImageNet-1k'
S42_BATCH = 'the training was performed using a batch size of 16 on 8 Tesla V100 GPUs.'
S42_EPOCHS = 'The number of training epochs was set to 12 and 36'
S42_MODEL = ('Table 3. COCO detection and instance segmentation with Mask R-CNN [18]. Models are '
             'trained for 1x schedule and 3x schedule [51] with multi-scale training inputs '
             '(MS) [31, 42].')
S43_DATA = ('The ADE20K [64] dataset is a widely used benchmark for semantic segmentation, '
            'comprising 150 object and stuff classes')
S43_TOOL = 'we utilized the MMSegmentation [4] toolbox [7] as our codebase.'
S43_HEAD = ('We employed UperNet [53] as the segmentation head, and the backbones were '
            'initialized with weights pre-trained on ImageNet-1K.')
S43_OPT = ('we utilized an AdamW [34] optimizer with an initial learning rate of 10^-4 and '
           'weight decay of 10^-4.')
S43_BATCH = ('The training was performed using a batch size of 32 on 8 Tesla V100 GPUs, and a '
             'total of 80K iterations were trained.')


def _task(path: str) -> str:
    name = osp.basename(path)
    if name.endswith('_in1k.py'):
        return 'imagenet'
    if name.endswith('_1x.py'):
        return 'coco_1x'
    if name.endswith('_3x.py'):
        return 'coco_3x'
    if name.endswith('_ade20k.py'):
        return 'ade20k'
    raise AssertionError(f'{path}: no recipe task for this config name')


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Config:
    return Config.fromfile(path)


def _scheduler(cfg: Config, kind: str) -> dict:
    found = [s for s in cfg.param_scheduler if s['type'] == kind]
    assert len(found) == 1, f'expected one {kind} in param_scheduler, got {cfg.param_scheduler}'
    return found[0]


def _transform(pipeline: List[dict], kind: str) -> dict:
    found = [t for t in pipeline if t['type'] == kind]
    assert len(found) == 1, f'expected one {kind} in {[t["type"] for t in pipeline]}'
    return found[0]


def _types(pipeline: List[dict]) -> List[str]:
    return [t['type'] for t in pipeline]


def _train_pipeline(cfg: Config) -> List[dict]:
    return cfg.train_dataloader.dataset.pipeline


def _test_pipeline(cfg: Config) -> List[dict]:
    return cfg.test_dataloader.dataset.pipeline


def _total_batch(cfg: Config) -> int:
    return GPUS * cfg.train_dataloader.batch_size


def _ms_branches(cfg: Config) -> Any:
    """The 3x pipeline's two branches as (transform type, its numbers) tuples."""
    choice = _transform(_train_pipeline(cfg), 'RandomChoice')
    out = []
    for branch in choice.transforms:
        steps = []
        for t in branch:
            if t['type'] == 'RandomChoiceResize':
                steps.append(('RandomChoiceResize', [tuple(s) for s in t['scales']],
                              t['keep_ratio']))
            elif t['type'] == 'RandomCrop':
                steps.append(('RandomCrop', t['crop_type'], tuple(t['crop_size']),
                              t['allow_negative_crop']))
            else:
                steps.append((t['type'], ))
        out.append(steps)
    return out


MULTI_SCALES = [(1333, short) for short in range(480, 801, 32)]


@dataclass(frozen=True)
class Recipe:
    """One number (or setting) of a recipe and where a config holds it.

    Args:
        tasks: The tasks it applies to ('imagenet', 'coco_1x', 'coco_3x', 'ade20k').
        name: What it is, for the test id and the message.
        get: Reads the value from a loaded config.
        expected: The value.
        source: The paper's sentence (PAPER) or the file of the work we follow (CHOICES).
    """

    tasks: Tuple[str, ...]
    name: str
    get: Callable[[Config], Any]
    expected: Any
    source: str


IMAGENET, COCO1, COCO3, ADE = ('imagenet', ), ('coco_1x', ), ('coco_3x', ), ('ade20k', )
COCO = COCO1 + COCO3

PAPER = [
    # ImageNet-1K (section 4.1)
    Recipe(IMAGENET, 'optimizer', lambda c: c.optim_wrapper.optimizer.type, 'AdamW', S41_OPT),
    Recipe(IMAGENET, 'momentum (AdamW beta1)', lambda c: c.optim_wrapper.optimizer.betas[0],
           0.9, S41_OPT),
    Recipe(IMAGENET, 'weight decay', lambda c: c.optim_wrapper.optimizer.weight_decay, 0.05,
           S41_OPT),
    Recipe(IMAGENET, 'total batch (8 GPUs x images per GPU)', _total_batch, 1024, S41_BATCH),
    Recipe(IMAGENET, 'auto_scale_lr base batch', lambda c: c.auto_scale_lr.base_batch_size,
           1024, S41_BATCH),
    Recipe(IMAGENET, 'epochs', lambda c: c.train_cfg.max_epochs, 300, S41_BATCH),
    Recipe(IMAGENET, 'linear warm-up epochs',
           lambda c: (_scheduler(c, 'LinearLR')['begin'], _scheduler(c, 'LinearLR')['end'],
                      _scheduler(c, 'LinearLR')['by_epoch']), (0, 5, True), S41_SCHED),
    Recipe(IMAGENET, 'cosine epochs (after warm-up, before the 10 cool-down epochs)',
           lambda c: (_scheduler(c, 'CosineAnnealingLR')['begin'],
                      _scheduler(c, 'CosineAnnealingLR')['end'],
                      _scheduler(c, 'CosineAnnealingLR')['T_max']), (5, 290, 285), S41_SCHED),
    Recipe(IMAGENET, 'schedulers (nothing changes the lr in the cool-down)',
           lambda c: sorted(s['type'] for s in c.param_scheduler),
           ['CosineAnnealingLR', 'LinearLR'], S41_SCHED),
    Recipe(IMAGENET, 'random flipping', lambda c: 'RandomFlip' in _types(_train_pipeline(c)),
           True, S41_AUG),
    Recipe(IMAGENET, 'mixup and cutmix',
           lambda c: [a['type'] for a in c.model.train_cfg.augments], ['Mixup', 'CutMix'],
           S41_AUG),
    Recipe(IMAGENET, 'training crop', lambda c: _transform(_train_pipeline(c),
                                                           'RandomResizedCrop')['scale'],
           224, S41_RES),
    Recipe(IMAGENET, 'single centre crop at test',
           lambda c: (_transform(_test_pipeline(c), 'CenterCrop')['crop_size'],
                      'TestTimeAug' in _types(_test_pipeline(c))), (224, False), S41_CROP),
    Recipe(IMAGENET, 'top-1 accuracy', lambda c: 1 in c.val_evaluator.topk, True, S41_CROP),
    Recipe(IMAGENET, 'classes', lambda c: c.model.head.num_classes, 1000, S41_DATA),
    Recipe(IMAGENET, 'global average pooling of the last stage',
           lambda c: (c.model.neck.type, tuple(c.model.backbone.out_indices)),
           ('GlobalAveragePooling', (3, )), S31_GAP),
    # COCO (section 4.2)
    Recipe(COCO, 'detector', lambda c: c.model.type, 'MaskRCNN', S42_MODEL),
    Recipe(COCO, 'instance masks and COCO 2017 train/val',
           lambda c: (_transform(_train_pipeline(c), 'LoadAnnotations')['with_mask'],
                      c.train_dataloader.dataset.ann_file, c.val_dataloader.dataset.ann_file,
                      list(c.val_evaluator.metric)),
           (True, 'annotations/instances_train2017.json',
            'annotations/instances_val2017.json', ['bbox', 'segm']), S42_DATA),
    Recipe(COCO, 'ImageNet-1K initialisation of the backbone',
           lambda c: (c.model.backbone.init_cfg.type, c.model.backbone.init_cfg.prefix),
           ('Pretrained', 'backbone.'), S42_INIT),
    Recipe(COCO, 'total batch (8 GPUs x images per GPU)', _total_batch, 16, S42_BATCH),
    Recipe(COCO, 'auto_scale_lr base batch', lambda c: c.auto_scale_lr.base_batch_size, 16,
           S42_BATCH),
    Recipe(COCO1, 'epochs', lambda c: c.train_cfg.max_epochs, 12, S42_EPOCHS),
    Recipe(COCO3, 'epochs', lambda c: c.train_cfg.max_epochs, 36, S42_EPOCHS),
    Recipe(COCO3, 'multi-scale training', lambda c: 'RandomChoice' in _types(_train_pipeline(c)),
           True, S42_MODEL),
    Recipe(COCO1, 'single-scale training', lambda c: 'RandomChoice' in _types(_train_pipeline(c)),
           False, S42_MODEL),
    # ADE20K (section 4.3)
    Recipe(ADE, 'toolbox', lambda c: c.default_scope, 'mmseg', S43_TOOL),
    Recipe(ADE, 'classes (decode and auxiliary heads)',
           lambda c: (c.model.decode_head.num_classes, c.model.auxiliary_head.num_classes),
           (150, 150), S43_DATA),
    Recipe(ADE, 'segmentation head', lambda c: c.model.decode_head.type, 'UPerHead', S43_HEAD),
    Recipe(ADE, 'ImageNet-1K initialisation of the backbone',
           lambda c: (c.model.backbone.init_cfg.type, c.model.backbone.init_cfg.prefix),
           ('Pretrained', 'backbone.'), S43_HEAD),
    Recipe(ADE, 'optimizer', lambda c: c.optim_wrapper.optimizer.type, 'AdamW', S43_OPT),
    Recipe(ADE, 'lr', lambda c: c.optim_wrapper.optimizer.lr, 1e-4, S43_OPT),
    Recipe(ADE, 'weight decay', lambda c: c.optim_wrapper.optimizer.weight_decay, 1e-4,
           S43_OPT),
    Recipe(ADE, 'total batch (8 GPUs x images per GPU)', _total_batch, 32, S43_BATCH),
    Recipe(ADE, 'auto_scale_lr base batch', lambda c: c.auto_scale_lr.base_batch_size, 32,
           S43_BATCH),
    Recipe(ADE, 'iterations', lambda c: (c.train_cfg.type, c.train_cfg.max_iters),
           ('SeededIterBasedTrainLoop', 80000), S43_BATCH),
]

PVT_1X = 'whai362/PVT detection/configs/mask_rcnn_pvt_s_fpn_1x_coco.py'
PVT_SCHED_1X = 'whai362/PVT detection/configs/_base_/schedules/schedule_1x.py'
PVT_3X = 'whai362/PVT detection/configs/mask_rcnn_pvt_v2_b2_fpn_3x_mstrain.py'
SWIN_3X = 'open-mmlab/mmdetection configs/swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
MPVIT_3X = 'youngwanLEE/MPViT detectron2/configs/maskrcnn/mask_rcnn_mpvit_*_ms_3x.yaml'
DEIT = 'facebookresearch/deit main.py'
MPVIT_MAIN = 'youngwanLEE/MPViT main.py'
PVT_ADE = 'whai362/PVT segmentation/configs/sem_fpn/PVT/fpn_pvt_s_ade20k_40k.py'
PVT_ADE_DATA = 'whai362/PVT segmentation/configs/_base_/datasets/ade20k.py'
SWIN_CLS = 'mmpretrain configs/_base_/datasets/imagenet_bs64_swin_224.py'

CHOICES = [
    # ImageNet-1K. The paper's text states 5e-4 at batch 1024; DeiT's main.py, whose defaults the
    # paper's numbers are, reads it per 512 images (docs/recipes.md).
    Recipe(IMAGENET, 'lr 1e-3 at batch 1024 (5e-4 per 512 images)',
           lambda c: c.optim_wrapper.optimizer.lr, 5e-4 * 1024 / 512,
           f'{DEIT} and {MPVIT_MAIN}: lr = --lr 5e-4 x batch / 512'),
    Recipe(IMAGENET, 'cosine minimum lr', lambda c: _scheduler(c, 'CosineAnnealingLR')['eta_min'],
           1e-5, f'{DEIT} --min-lr 1e-5'),
    Recipe(IMAGENET, 'warm-up start (x peak lr)',
           lambda c: _scheduler(c, 'LinearLR')['start_factor'], 1e-3,
           f'{DEIT} --warmup-lr 1e-6 = 1e-3 x 1e-3'),
    Recipe(IMAGENET, 'gradient clipping', lambda c: c.optim_wrapper.get('clip_grad'), None,
           f'{DEIT} and {MPVIT_MAIN} --clip-grad None'),
    Recipe(IMAGENET, 'no weight decay on norms, biases, 1-D parameters',
           lambda c: (c.optim_wrapper.paramwise_cfg.norm_decay_mult,
                      c.optim_wrapper.paramwise_cfg.bias_decay_mult,
                      c.optim_wrapper.paramwise_cfg.flat_decay_mult), (0.0, 0.0, 0.0),
           'timm optim_factory (DeiT create_optimizer)'),
    Recipe(IMAGENET, 'mixup and cutmix alphas',
           lambda c: [a['alpha'] for a in c.model.train_cfg.augments], [0.8, 1.0],
           f'{DEIT} --mixup 0.8 --cutmix 1.0'),
    Recipe(IMAGENET, 'label smoothing',
           lambda c: (c.model.head.loss.type, c.model.head.loss.label_smooth_val),
           ('LabelSmoothLoss', 0.1), f'{DEIT} --smoothing 0.1'),
    Recipe(IMAGENET, 'flip probability',
           lambda c: _transform(_train_pipeline(c), 'RandomFlip')['prob'], 0.5, SWIN_CLS),
    Recipe(IMAGENET, 'RandAugment and random erasing (DeiT)',
           lambda c: (_transform(_train_pipeline(c), 'RandAugment')['magnitude_level'],
                      _transform(_train_pipeline(c), 'RandomErasing')['erase_prob']),
           (9, 0.25), f'{DEIT} --aa rand-m9-mstd0.5-inc1 --reprob 0.25; {SWIN_CLS}'),
    Recipe(IMAGENET, 'test resize (short side 256, DeiT crop ratio 0.875)',
           lambda c: _transform(_test_pipeline(c), 'ResizeEdge')['scale'], 256, SWIN_CLS),
    # COCO 1x
    Recipe(COCO1, 'optimizer, lr, weight decay',
           lambda c: (c.optim_wrapper.optimizer.type, c.optim_wrapper.optimizer.lr,
                      c.optim_wrapper.optimizer.weight_decay), ('AdamW', 2e-4, 1e-4), PVT_1X),
    Recipe(COCO1, 'lr x0.1 after epochs',
           lambda c: (_scheduler(c, 'MultiStepLR')['milestones'],
                      _scheduler(c, 'MultiStepLR')['gamma']), ([8, 11], 0.1), PVT_SCHED_1X),
    Recipe(COCO1, 'training scale', lambda c: (_transform(_train_pipeline(c), 'Resize')['scale'],
                                               _transform(_train_pipeline(c), 'Resize')
                                               ['keep_ratio']),
           ((1333, 800), True), 'whai362/PVT detection/configs/_base_/datasets/coco_instance.py'),
    # COCO 3x
    Recipe(COCO3, 'optimizer, lr, weight decay',
           lambda c: (c.optim_wrapper.optimizer.type, c.optim_wrapper.optimizer.lr,
                      c.optim_wrapper.optimizer.weight_decay), ('AdamW', 1e-4, 0.05),
           f'{PVT_3X}; {SWIN_3X}; {MPVIT_3X}'),
    Recipe(COCO3, 'no weight decay on norm layers',
           lambda c: c.optim_wrapper.paramwise_cfg.norm_decay_mult, 0.0,
           f"{PVT_3X} and {SWIN_3X}: custom_keys 'norm' decay_mult 0"),
    Recipe(COCO3, 'lr x0.1 after epochs',
           lambda c: (_scheduler(c, 'MultiStepLR')['milestones'],
                      _scheduler(c, 'MultiStepLR')['gamma']), ([27, 33], 0.1),
           f'{PVT_3X}; {SWIN_3X}'),
    Recipe(COCO3, 'multi-scale pipeline (resize 480..800 step 32, or resize, crop, resize)',
           _ms_branches,
           [[('RandomChoiceResize', MULTI_SCALES, True)],
            [('RandomChoiceResize', [(1333, 400), (1333, 500), (1333, 600)], True),
             ('RandomCrop', 'absolute_range', (384, 600), True),
             ('RandomChoiceResize', MULTI_SCALES, True)]], f'{PVT_3X}; {SWIN_3X}'),
    Recipe(COCO3, 'flip before the multi-scale choice',
           lambda c: _types(_train_pipeline(c))[2:4], ['RandomFlip', 'RandomChoice'],
           f'{PVT_3X}; {SWIN_3X}'),
    # COCO both
    Recipe(COCO, 'linear warm-up iterations',
           lambda c: (_scheduler(c, 'LinearLR')['start_factor'], _scheduler(c, 'LinearLR')['end'],
                      _scheduler(c, 'LinearLR')['by_epoch']), (0.001, 500, False), PVT_SCHED_1X),
    Recipe(COCO, 'gradient clipping', lambda c: c.optim_wrapper.get('clip_grad'), None,
           f'{PVT_1X}; {PVT_3X}: grad_clip None'),
    Recipe(COCO, 'flip probability',
           lambda c: _transform(_train_pipeline(c), 'RandomFlip')['prob'], 0.5, PVT_3X),
    # ADE20K
    Recipe(ADE, 'poly decay to 0 over the run, no warm-up',
           lambda c: [(s['type'], s['power'], s['eta_min'], s['begin'], s['end'])
                      for s in c.param_scheduler], [('PolyLR', 0.9, 0.0, 0, 80000)], PVT_ADE),
    Recipe(ADE, 'gradient clipping', lambda c: c.optim_wrapper.get('clip_grad'), None, PVT_ADE),
    Recipe(ADE, 'training crop and padding',
           lambda c: (tuple(_transform(_train_pipeline(c), 'RandomCrop')['crop_size']),
                      _transform(_train_pipeline(c), 'RandomCrop')['cat_max_ratio'],
                      tuple(c.model.data_preprocessor.size)), ((512, 512), 0.75, (512, 512)),
           PVT_ADE_DATA),
    Recipe(ADE, 'random rescale before the crop',
           lambda c: (tuple(_transform(_train_pipeline(c), 'RandomResize')['scale']),
                      tuple(_transform(_train_pipeline(c), 'RandomResize')['ratio_range'])),
           ((2048, 512), (0.5, 2.0)), PVT_ADE_DATA),
    Recipe(ADE, 'flip and photometric distortion',
           lambda c: _types(_train_pipeline(c))[-3:],
           ['RandomFlip', 'PhotoMetricDistortion', 'PackSegInputs'], PVT_ADE_DATA),
]

# Tables 2-4, quoted in each config's second line.
FIGURES = {
    'imagenet': ('Table 2', {'t': 'top-1 78.4%', 'xs': 'top-1 81.5%', 's': 'top-1 83.5%',
                             'b': 'top-1 84.8%'}),
    'coco_1x': ('Table 3', {'t': 'box AP 42.4, mask AP 39.2', 'xs': 'box AP 44.6, mask AP 40.8',
                            's': 'box AP 46.8, mask AP 42.6', 'b': 'box AP 48.5, mask AP 43.6'}),
    'coco_3x': ('Table 3', {'t': 'box AP 45.1, mask AP 41.2', 'xs': 'box AP 47.0, mask AP 42.5',
                            's': 'box AP 48.6, mask AP 44.0', 'b': 'box AP 49.6, mask AP 44.6'}),
    'ade20k': ('Table 4', {'s': 'mIoU 48.6', 'b': 'mIoU 50.5'}),
}
SECTIONS = {'imagenet': '4.1', 'coco_1x': '4.2', 'coco_3x': '4.2', 'ade20k': '4.3'}
# The learning rates the paper states (sections 4.1 and 4.3; section 4.2 gives none). Line 1
# says ", except the lr" where a config does not follow it (docs/recipes.md says why).
PAPER_LR = {'imagenet': 5e-4, 'ade20k': 1e-4}


def _rel(path: str) -> str:
    return osp.relpath(path, ROOT)


def _cases(table: List[Recipe]):
    return [pytest.param(path, recipe, id=f'{_rel(path)[8:-3]}-{recipe.name}')
            for path in CONFIGS for recipe in table if _task(path) in recipe.tasks]


def _size(path: str) -> str:
    match = re.search(r'dualformer_(t|xs|s|b)_', osp.basename(path))
    assert match, path
    return match.group(1)


def test_every_config_has_a_task_and_every_entry_a_config():
    tasks = {_task(p) for p in CONFIGS}
    assert tasks == set(SECTIONS)
    for recipe in PAPER + CHOICES:
        assert set(recipe.tasks) <= tasks, recipe.name


@pytest.mark.parametrize('path,recipe', _cases(PAPER))
def test_config_holds_the_papers_number(path, recipe):
    actual = recipe.get(_load(path))
    assert actual == recipe.expected, (
        f'{_rel(path)}: {recipe.name} is {actual!r}, the paper\'s value is {recipe.expected!r} '
        f'(section {SECTIONS[_task(path)]}: "{recipe.source}")')


@pytest.mark.parametrize('path,recipe', _cases(CHOICES))
def test_config_holds_the_recorded_choice(path, recipe):
    actual = recipe.get(_load(path))
    assert actual == recipe.expected, (
        f'{_rel(path)}: {recipe.name} is {actual!r}; docs/recipes.md records {recipe.expected!r} '
        f'(the paper is silent; from {recipe.source}). Change the config, docs/recipes.md and '
        f'this table together.')


def _bases(path: str) -> List[str]:
    """The repository files a config inherits directly (``_base_`` entries that are paths)."""
    text = open(path).read()
    return [osp.normpath(osp.join(osp.dirname(path), base))
            for base in re.findall(r"['\"](\.{1,2}/[^'\"]+\.py)['\"]", text)]


def _chain(path: str) -> List[str]:
    """The file and the repository files it inherits."""
    return [path] + [f for base in _bases(path) for f in _chain(base)]


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: _rel(p)[8:-3])
def test_batch_comments_say_the_batch(path):
    """Every "N GPUs x M images" comment of the config and its bases is the configured batch."""
    cfg = _load(path)
    said = [(int(g), int(i)) for f in _chain(path)
            for g, i in re.findall(r'(\d+) GPUs x (\d+) images', open(f).read())]
    assert said, f'{_rel(path)}: no comment says the batch as "GPUs x images"'
    assert set(said) == {(GPUS, cfg.train_dataloader.batch_size)}, (
        f'{_rel(path)}: comments say {sorted(set(said))} (GPUs, images per GPU), the config '
        f'trains {cfg.train_dataloader.batch_size} images per GPU on the paper\'s {GPUS} GPUs')


# Line 1 of every config: what it trains, on what, and whose recipe, e.g. "Mask R-CNN +
# DualFormer-T on COCO 2017, 3x schedule + MS: the paper's recipe (section 4.2)." or, for the
# demo, "make demo: DualFormer-T image classifier on the synthetic shapes (4 classes, 64x64
# images)."
HEADER = re.compile(
    r"# (?P<demo>make demo: )?(?:(?P<head>Mask R-CNN|UperNet) \+ )?DualFormer-(?P<size>T|XS|S|B) "
    r"(?:image classifier )?on (?P<data>[^:]+?)"
    r"(?:: the paper's recipe \(section (?P<section>4\.\d)\)(?P<lr_except>, except the lr)?)?\.$")
MODEL_TYPES = {None: 'ImageClassifier', 'Mask R-CNN': 'MaskRCNN', 'UperNet': 'EncoderDecoder'}


@functools.lru_cache(maxsize=None)
def _demo_configs() -> Tuple[str, ...]:
    """The configs ``make demo`` trains (``tools/run_demo.py``'s tasks)."""
    spec = importlib.util.spec_from_file_location('run_demo_tasks',
                                                  osp.join(ROOT, 'tools', 'run_demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(sorted(osp.join(ROOT, task['config']) for task in module.TASKS.values()))


def _data_claims(data: str, cfg: Config) -> List[Tuple[str, Any, Any]]:
    """(claim, the config's value, the value line 1 says) for line 1's data part."""
    train = _train_pipeline(cfg)
    dataset = cfg.train_dataloader.dataset
    match = re.fullmatch(r'ImageNet-1K at (\d+)x(\d+)', data)
    if match:
        return [('ImageNet-1K', (dataset.type, cfg.model.head.num_classes), ('ImageNet', 1000)),
                (f'{match[1]}x{match[2]} training crop',
                 _transform(train, 'RandomResizedCrop')['scale'], int(match[1]))]
    match = re.fullmatch(r'COCO 2017, (\d)x schedule( \+ MS)?', data)
    if match:
        return [('COCO 2017', (dataset.type, dataset.ann_file),
                 ('CocoDataset', 'annotations/instances_train2017.json')),
                (f'{match[1]}x schedule (12 epochs each)', cfg.train_cfg.max_epochs,
                 12 * int(match[1])),
                ('multi-scale training' if match[2] else 'single-scale training',
                 'RandomChoice' in _types(train), bool(match[2]))]
    match = re.fullmatch(r'ADE20K at (\d+)x(\d+)', data)
    if match:
        return [('ADE20K', (dataset.type, cfg.model.decode_head.num_classes),
                 ('ADE20KDataset', 150)),
                (f'{match[1]}x{match[2]} training crop',
                 tuple(_transform(train, 'RandomCrop')['crop_size']),
                 (int(match[1]), int(match[2])))]
    match = re.fullmatch(r'the synthetic shapes \((?:(\d+) classes|(COCO|ADE20K) format), '
                         r'(\d+)x(\d+) images\)', data)
    assert match, f'line 1 names data this test does not know: {data!r}'
    size = (int(match[3]), int(match[4]))
    claims = [('data/demo/', dataset.data_root.startswith('data/demo/'), True)]
    if match[1]:
        claims.append((f'{match[1]} classes', cfg.model.head.num_classes, int(match[1])))
        claims.append((f'{size} crop', _transform(train, 'RandomResizedCrop')['scale'], size[0]))
    elif match[2] == 'COCO':
        claims.append(('COCO format', dataset.type, 'CocoDataset'))
        claims.append((f'{size} images', tuple(_transform(train, 'Resize')['scale']), size))
    else:
        # ADE20KDataset takes only subsets of ADE's 150 classes: the layout is read by its base.
        claims.append(('ADE20K format', (dataset.img_suffix, dataset.seg_map_suffix,
                                         dataset.reduce_zero_label), ('.jpg', '.png', True)))
        claims.append((f'{size} images', tuple(cfg.model.data_preprocessor.size), size))
    return claims


@pytest.mark.parametrize('path', training_configs(), ids=lambda p: _rel(p)[8:-3])
def test_header_says_what_the_config_trains(path):
    """Line 1's model, size, data, schedule and recipe are the config's; line 2 quotes the
    paper's figure, which is not reproduced here (a demo's line 2 says what it inherits)."""
    cfg = _load(path)
    with open(path) as f:
        first, second = f.readline().rstrip('\n'), f.readline().rstrip('\n')
    header = HEADER.match(first)
    assert header, f'{_rel(path)}: line 1 does not say what the config trains: {first!r}'
    claims = [('model', cfg.model.type, MODEL_TYPES[header['head']]),
              (f'DualFormer-{header["size"]}', (cfg.model.backbone.type, cfg.model.backbone.arch),
               ('DualFormer', header['size'].lower())),
              ('trained by make demo', path in _demo_configs(), bool(header['demo']))]
    if header['head'] == 'UperNet':
        claims.append(('UperNet', cfg.model.decode_head.type, 'UPerHead'))
    claims += _data_claims(header['data'], cfg)
    if header['demo']:
        assert header['section'] is None, f'{_rel(path)}: a demo config names a recipe'
    else:
        task = _task(path)
        # The section whose PAPER entries test_config_holds_the_papers_number checks here.
        claims.append(("the paper's recipe", header['section'], SECTIONS[task]))
        lr = cfg.optim_wrapper.optimizer.lr
        claims.append((f'lr {lr} against the paper\'s {PAPER_LR.get(task)}',
                       bool(header['lr_except']),
                       task in PAPER_LR and lr != pytest.approx(PAPER_LR[task])))
    wrong = [claim for claim in claims if claim[1] != claim[2]]
    assert not wrong, (f'{_rel(path)}: line 1 says {first!r}, which the config does not do: '
                       f'(claim, the config\'s value, the value line 1 says) {wrong}')
    if header['demo']:
        return
    table, figures = FIGURES[_task(path)]
    size = header['size'].lower()
    figure = f'{figures[size]} ({table}).' if size in figures else \
        f'none ({table} reports only S and B).'
    assert second == f"# Paper's figure, not reproduced here: {figure} Recipe: docs/recipes.md.", (
        f'{_rel(path)}: line 2 should quote the paper\'s figure {figure!r}, got {second!r}')


def _plain(value: Any) -> Any:
    """``value`` with every ConfigDict a dict and every tuple a list."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _changed_keys(new: Any, old: Any, key: str) -> Set[str]:
    """The dotted keys under ``key`` whose values differ: nested dicts are compared key by key
    (a key present in one of them only is a change), any other value whole."""
    if not (isinstance(new, dict) and isinstance(old, dict)):
        return set() if new == old else {key}
    changed = set()
    for name in set(new) | set(old):
        sub = f'{key}.{name}'
        changed |= {sub} if (name in new) != (name in old) else \
            _changed_keys(new[name], old[name], sub)
    return changed


def _overrides(path: str) -> Set[str]:
    """What a config changes relative to the config it inherits, as the Runner sees it: every
    key mmengine's Runner takes (its constructor's arguments, which ``Runner.from_cfg`` reads
    from the config), down to the leaves of nested dicts. Helper variables such as
    ``data_root`` count through the keys that use them."""
    from mmengine.runner import Runner
    keys = set(inspect.signature(Runner.__init__).parameters) - {'self', 'cfg'}
    (base, ) = _bases(path)
    new, old = _load(path), _load(base)
    return set().union(*(_changed_keys(_plain(new.get(k)), _plain(old.get(k)), k)
                         for k in keys))


# The keys a demo header may name as a whole while only part of them changes: the data and the
# schedule, which a demo replaces. Every other override, of the model and the optimizer above
# all, is named key by key.
DEMO_WHOLE_KEYS = {'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                   'test_evaluator', 'train_cfg', 'param_scheduler', 'default_hooks'}


def _header_overrides(path: str) -> Tuple[str, List[str]]:
    """The config line 2 says the demo inherits, and the keys of its "# - key, key: why" lines
    (a line that starts with "#   " continues the one above)."""
    with open(path) as f:
        header = [line.rstrip('\n') for line in f]
    header = header[:next(i for i, line in enumerate(header) if not line.startswith('#'))]
    match = re.fullmatch(r'# Overrides of (configs/\S+\.py), which it inherits, and why:',
                         header[1])
    assert match, f'{_rel(path)}: line 2 should name the config it inherits, got {header[1]!r}'
    keys = []
    for line in header[2:]:
        item = re.match(r'# - ((?:[\w.]+, )*[\w.]+): \S', line)
        assert item or line.startswith('#   '), f'{_rel(path)}: not an override line: {line!r}'
        keys += item.group(1).split(', ') if item else []
    return match.group(1), keys


@pytest.mark.parametrize('path', _demo_configs(), ids=lambda p: _rel(p)[8:-3])
def test_demo_header_lists_every_override(path):
    """A demo's header lists every key it changes relative to the config it inherits, each
    with why; a new override that the header does not name fails here."""
    inherited, listed = _header_overrides(path)
    assert [osp.join(ROOT, inherited)] == _bases(path), (
        f'{_rel(path)}: line 2 names {inherited}, the config inherits '
        f'{[_rel(b) for b in _bases(path)]}')
    changed = _overrides(path)
    unnamed = sorted(k for k in changed if not any(k == n or k.startswith(f'{n}.')
                                                   for n in listed))
    assert not unnamed, f'{_rel(path)}: overrides its header does not name: {unnamed}'
    for name in listed:
        if name in changed:
            continue
        under = sorted(k for k in changed if k.startswith(f'{name}.'))
        assert under and name in DEMO_WHOLE_KEYS, (
            f'{_rel(path)}: the header names {name!r}, which the config does not change as a '
            f'whole; the changed keys under it are {under}' if under else
            f'{_rel(path)}: the header names {name!r}, which the config does not change')


def test_override_diff_sees_what_a_demo_changes(tmp_path):
    """The comparison behind the demo headers: a changed leaf, an added key and a replaced
    list are changes; an identical value is not."""
    base = tmp_path / 'base.py'
    base.write_text("model = dict(backbone=dict(drop_path_rate=0.1, arch='t'), neck=None)\n"
                    "param_scheduler = [dict(type='LinearLR', end=5)]\n"
                    "train_cfg = dict(max_epochs=300)\n")
    demo = tmp_path / 'demo.py'
    demo.write_text("_base_ = ['./base.py']\n"
                    "model = dict(backbone=dict(drop_path_rate=0.0), head=dict(topk=(1, )))\n"
                    "param_scheduler = [dict(type='LinearLR', end=1)]\n"
                    "train_cfg = dict(max_epochs=300)\n"
                    "data_root = 'data/demo'\n")
    assert _overrides(str(demo)) == {'model.backbone.drop_path_rate', 'model.head',
                                     'param_scheduler'}


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=_rel)
def test_no_config_claims_to_reproduce(path):
    """No pretrained weights exist: nothing here has reproduced the paper's numbers."""
    with open(path) as f:
        claims = [line.rstrip() for line in f if line.lstrip().lower().startswith('# reproduces')]
    assert not claims, f'{_rel(path)}: {claims}'


# Stochastic depth per size, the same in every task; the paper gives none (docs/recipes.md).
DROP_PATH = {'t': 0.1, 'xs': 0.1, 's': 0.2, 'b': 0.4}


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: _rel(p)[8:-3])
def test_drop_path_rate_is_the_recorded_choice(path):
    backbone = _load(path).model.backbone
    assert backbone.arch == _size(path), f'{_rel(path)}: arch {backbone.arch!r}'
    assert backbone.drop_path_rate == DROP_PATH[_size(path)], (
        f'{_rel(path)}: drop_path_rate is {backbone.drop_path_rate}; docs/recipes.md records '
        f'{DROP_PATH[_size(path)]} for DualFormer-{SIZES[_size(path)]} (the paper gives none)')


# What the ImageNet headers list after "# Paper:" (numbers the paper states, which the configs
# follow) and "# Ours:" (our reading where the paper's text says otherwise, or is silent), and
# where a config holds each.
HEADER_ITEMS = {
    'optimizer': ('Paper', lambda c: c.optim_wrapper.optimizer.type),
    'momentum': ('Paper', lambda c: c.optim_wrapper.optimizer.betas[0]),
    'weight decay': ('Paper', lambda c: c.optim_wrapper.optimizer.weight_decay),
    'batch': ('Paper', _total_batch),
    'epochs': ('Paper', lambda c: c.train_cfg.max_epochs),
    'warm-up epochs': ('Paper', lambda c: _scheduler(c, 'LinearLR')['end']
                       - _scheduler(c, 'LinearLR')['begin']),
    'cool-down epochs': ('Paper', lambda c: c.train_cfg.max_epochs
                         - _scheduler(c, 'CosineAnnealingLR')['end']),
    'lr': ('Ours', lambda c: c.optim_wrapper.optimizer.lr),
    'drop path': ('Ours', lambda c: c.model.backbone.drop_path_rate),
}
IMAGENET_SCHEDULE = osp.join(ROOT, 'configs', '_base_', 'schedules',
                             'imagenet_bs1024_adamw_300e_dualformer.py')


def _header_items(path: str) -> dict:
    """``{name: (kind, value)}`` from the ``# Paper: name value, ...`` and ``# Ours:`` lines."""
    items = {}
    with open(path) as f:
        for line in f:
            match = re.match(r'# (Paper|Ours): (.*)\.$', line.rstrip('\n'))
            if match:
                for item in match.group(2).split(', '):
                    name, value = item.rsplit(' ', 1)
                    assert name not in items, f'{_rel(path)}: {name!r} twice'
                    try:
                        items[name] = (match.group(1), float(value))
                    except ValueError:
                        items[name] = (match.group(1), value)
    return items


@pytest.mark.parametrize('path', [p for p in CONFIGS if _task(p) == 'imagenet']
                         + [IMAGENET_SCHEDULE], ids=lambda p: _rel(p)[8:-3])
def test_imagenet_header_says_what_is_the_papers_and_what_is_ours(path):
    """Each number of the header is the config's, under the right one of Paper / Ours."""
    items = _header_items(path)
    # The schedule is checked through the config that uses it; it sets no drop path.
    cfg = _load(osp.join(ROOT, 'configs', 'mmpretrain', 'dualformer_t_in1k.py')
                if path == IMAGENET_SCHEDULE else path)
    expected = set(HEADER_ITEMS) - ({'drop path'} if path == IMAGENET_SCHEDULE else set())
    assert set(items) == expected, f'{_rel(path)}: header lists {sorted(items)}'
    for name, (kind, value) in items.items():
        recorded_kind, get = HEADER_ITEMS[name]
        assert kind == recorded_kind, f'{_rel(path)}: {name} is listed as {kind}'
        actual = get(cfg)
        assert actual == (pytest.approx(value) if isinstance(value, float) else value), (
            f'{_rel(path)}: the header says {name} {value}, the config has {actual!r}')
