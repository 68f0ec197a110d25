# Copyright (c) dualformer-mm contributors.
"""One ablation run: train a DualFormer classifier on an image folder for a fixed budget.

The model is that of the project's ImageNet classifier config (:data:`CLASSIFIER_CONFIG`,
``configs/mmpretrain/dualformer_t_in1k.py`` of the repository, whose model is
``configs/_base_/models/dualformer_cls.py``: GAP neck, linear head, label smoothing; with
mmpretrain's ImageNet data preprocessor) at the budget's size, with the variant's backbone
options and the dataset's classes; the data are mmpretrain ``CustomDataset`` folders (one
subfolder per class); the optimizer is built by mmengine from an ``optim_wrapper`` config
(AdamW, no weight decay on norms and biases, as the ImageNet recipe),
with a linear warm-up and a cosine decay per step; top-1 is mmpretrain's ``Accuracy``. Every
source of randomness (weights, LSH planes, sampling order, crops and flips) follows the run's
seed, and nothing else differs between variants.
"""
import copy
import functools
import math
import os.path as osp
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import Evaluator
from mmengine.optim import CosineAnnealingLR, LinearLR, build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner import set_random_seed

#: The classifier config the runs build their model from, relative to the repository's root
#: (the configs are no part of the installed package: the caller names the checkout).
CLASSIFIER_CONFIG = osp.join('configs', 'mmpretrain', 'dualformer_t_in1k.py')
UNTIMED_STEPS = 2  # the first steps allocate and pick kernels; they are not timed


@dataclass(frozen=True)
class Budget:
    """What every variant and seed of one ablation shares.

    Args:
        arch: DualFormer size (``t``, ``xs``, ``s``, ``b``).
        steps: Optimizer steps per run.
        batch_size: Images per step.
        img_size: Side of the square training and test crops.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not on norms, biases and other 1-D parameters).
        warmup_steps: Steps of linear warm-up from 1% of ``lr``; a cosine to 1% follows.
        min_crop: Smallest area fraction of the random resized crop.
        drop_path_rate: Stochastic depth of the backbone.

    Example:
        >>> Budget(arch='t', steps=10, batch_size=8, img_size=32).lr
        0.002
    """

    # The defaults are the schedule of configs/demo/cls_dualformer_t_demo.py: 4 epochs of the
    # demo's 480 images, one of them warm-up.
    arch: str = 't'
    steps: int = 60
    batch_size: int = 32
    img_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 15
    min_crop: float = 0.6
    drop_path_rate: float = 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        for name in ('steps', 'batch_size', 'img_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.img_size < 32:
            raise ValueError(f'img_size must be >= 32 (the last stage has stride 32), got '
                             f'{self.img_size}')
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f'warmup_steps must be in 0..steps-1, got {self.warmup_steps}')
        if not 0 < self.min_crop <= 1:
            raise ValueError(f'min_crop must be in (0, 1], got {self.min_crop}')

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _mmpretrain_scope():
    """Build in mmpretrain's registries (datasets, transforms, models) whatever scope the
    process is in: mmengine builds from the current default scope's registry, which a runner
    of another toolbox in the same process may have left behind."""
    import mmpretrain.utils  # noqa: F401  (registers mmpretrain's modules)
    return DefaultScope.overwrite_default_scope('mmpretrain')


def build_dataset(root: str, prefix: str, budget: Budget, train: bool):
    """mmpretrain ``CustomDataset`` over ``root/prefix/<class>/<image>``."""
    from mmpretrain.registry import DATASETS
    size = budget.img_size
    if train:
        pipeline = [dict(type='LoadImageFromFile'),
                    dict(type='RandomResizedCrop', scale=size,
                         crop_ratio_range=(budget.min_crop, 1.0), backend='pillow'),
                    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                    dict(type='PackInputs')]
    else:
        pipeline = [dict(type='LoadImageFromFile'),
                    dict(type='ResizeEdge', scale=size, edge='short', backend='pillow'),
                    dict(type='CenterCrop', crop_size=size),
                    dict(type='PackInputs')]
    with _mmpretrain_scope():
        return DATASETS.build(dict(type='CustomDataset', data_root=root, data_prefix=prefix,
                                   pipeline=pipeline))


def build_classifier(budget: Budget, backbone_options: Dict[str, Any], num_classes: int,
                     config_file: str = CLASSIFIER_CONFIG):
    """The project's classifier config with the variant's backbone options.

    Args:
        budget: The shared budget (size, stochastic depth).
        backbone_options: DualFormer options of the variant (nested dicts allowed).
        num_classes: Classes of the dataset.
        config_file: The classifier config. Defaults to :data:`CLASSIFIER_CONFIG` under the
            working directory.

    Example:
        >>> model = build_classifier(Budget(), {'block_cfg': {'mode': 'serial'}}, 3,
        ...                          'configs/mmpretrain/dualformer_t_in1k.py')  # doctest: +SKIP
        >>> model.head.num_classes, model.backbone.block_cfg.mode  # doctest: +SKIP
        (3, 'serial')
    """
    from mmpretrain.registry import MODELS

    from ...models import DualFormer
    config = _classifier_config(config_file)
    cfg = copy.deepcopy(config.model)
    cfg.data_preprocessor = dict(copy.deepcopy(config.data_preprocessor),
                                 num_classes=num_classes)
    cfg.backbone.update(arch=budget.arch, drop_path_rate=budget.drop_path_rate)
    _merge(cfg.backbone, backbone_options)
    cfg.head.update(num_classes=num_classes,
                    in_channels=DualFormer.arch_zoo[budget.arch]['channels'][-1])
    # Mixup and CutMix regularise 300-epoch runs; a short budget learns less with them.
    cfg.train_cfg = None
    with _mmpretrain_scope():
        model = MODELS.build(cfg)
    model.init_weights()
    return model


@functools.lru_cache(maxsize=1)
def _classifier_config(path: str) -> Config:
    if not osp.isfile(path):
        raise FileNotFoundError(f'the ablation builds its classifier from {path}, which does '
                                f'not exist under {osp.abspath(".")}; pass the config of a '
                                'checkout of the repository')
    return Config.fromfile(path)


def _merge(target: Dict, options: Dict[str, Any]) -> None:
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _batches(dataset, batch_size: int, seed: int):
    """Endless shuffled batches, reshuffled each epoch from the run's own generator."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         drop_last=True, collate_fn=pseudo_collate,
                                         generator=generator, num_workers=0)
    if len(loader) == 0:
        raise ValueError(f'the training set has {len(dataset)} images, fewer than one batch '
                         f'of {batch_size}')
    while True:
        yield from loader


def evaluate(model, dataset, batch_size: int) -> float:
    """Top-1 (%) of ``model`` on ``dataset`` with mmpretrain's ``Accuracy``."""
    from mmpretrain.evaluation import Accuracy
    evaluator = Evaluator(Accuracy(topk=(1, )))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=pseudo_collate, num_workers=0)
    model.eval()
    with torch.no_grad():
        for data in loader:
            evaluator.process(data_samples=model.val_step(data), data_batch=data)
    return float(evaluator.evaluate(len(dataset))['accuracy/top1'])


def train_one(budget: Budget, backbone_options: Dict[str, Any], seed: int, train_set, val_set,
              progress: Optional[Callable[[int, float, float], None]] = None,
              config_file: str = CLASSIFIER_CONFIG) -> Dict[str, Any]:
    """Train one variant with one seed and evaluate it.

    Args:
        budget: The shared budget.
        backbone_options: DualFormer options of the variant (nested dicts allowed).
        seed: Seeds weights, LSH planes, sampling order and augmentation.
        train_set: Training dataset (:func:`build_dataset`).
        val_set: Evaluation dataset.
        progress: Called as ``progress(step, loss, seconds_per_step)`` after each step.
        config_file: The classifier config (:func:`build_classifier`).

    Returns:
        dict: ``top1`` (%), ``final_loss``, ``ms_per_step`` (median of the timed steps),
        ``train_seconds``.
    """
    set_random_seed(seed)
    num_classes = len(train_set.metainfo['classes'])
    model = build_classifier(budget, backbone_options, num_classes, config_file)
    optim_wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=budget.lr, weight_decay=budget.weight_decay,
                       betas=(0.9, 0.999)),
        paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0)))
    schedulers = [CosineAnnealingLR(optim_wrapper, T_max=budget.steps - budget.warmup_steps,
                                    eta_min=budget.lr * 0.01, begin=budget.warmup_steps,
                                    end=budget.steps, by_epoch=False)]
    if budget.warmup_steps:
        schedulers.insert(0, LinearLR(optim_wrapper, start_factor=0.01, begin=0,
                                      end=budget.warmup_steps, by_epoch=False))
    batches = _batches(train_set, budget.batch_size, seed)
    model.train()
    times, loss, start = [], math.nan, time.perf_counter()
    for step in range(1, budget.steps + 1):
        data = next(batches)
        tic = time.perf_counter()
        log_vars = model.train_step(data, optim_wrapper)
        times.append(time.perf_counter() - tic)
        for scheduler in schedulers:
            scheduler.step()
        loss = float(log_vars['loss'].detach())
        if progress is not None:
            progress(step, loss, times[-1])
    train_seconds = time.perf_counter() - start
    timed = times[UNTIMED_STEPS:] or times
    return dict(top1=evaluate(model, val_set, budget.batch_size), final_loss=loss,
                ms_per_step=1e3 * statistics.median(timed), train_seconds=train_seconds)


def complexity(budget: Budget, backbone_options: Dict[str, Any], num_classes: int,
               config_file: str = CLASSIFIER_CONFIG) -> Tuple[int, int]:
    """Parameters and FLOPs of the variant's classifier on one ``img_size`` image.

    Args:
        budget: The shared budget (the image size).
        backbone_options: DualFormer options of the variant.
        num_classes: Classes of the dataset.
        config_file: The classifier config (:func:`build_classifier`).

    Returns:
        tuple[int, int]: Parameters and FLOPs.
    """
    from ...utils import count_complexity
    model = build_classifier(budget, backbone_options, num_classes, config_file)
    return count_complexity(model, (budget.img_size, budget.img_size))
