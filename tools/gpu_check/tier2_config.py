# Copyright (c) dualformer-mm contributors.
"""The configs tier 2 of the GPU check trains: the real ones, on a few generated images.

:func:`tier2_config` loads ``dualformer_s_in1k``, ``mask_rcnn_dualformer_s_1x`` or
``upernet_dualformer_s_ade20k`` and changes only the data (two generated images, one batch:
exactly one training iteration), the schedule (that one iteration, no validation, no
checkpoint), the predict hook of :mod:`gpu_check.predict_hook` and, for the CPU dry run, the
pipelines and the detector's proposal counts (tiny images); the model, optimizer and AMP
settings are the config's. :func:`dist_demo_config` sets the detection demo config up for the
two-GPU ``dist_train_det`` step.
"""
import copy
import os.path as osp
from typing import Any, Dict

from .common import ROOT

# task -> (config, maker of its generated data in tests/test_tools.py, loop of its schedule)
TASKS = {
    'cls': ('configs/mmpretrain/dualformer_s_in1k.py', 'make_imagenet', 'epoch'),
    'det': ('configs/mmdet/mask_rcnn_dualformer_s_1x.py', 'make_coco', 'epoch'),
    'seg': ('configs/mmseg/upernet_dualformer_s_ade20k.py', 'make_ade20k', 'iter'),
}
DRY_CROP = (64, 64)
# Tiny pipelines for the CPU dry run; on a GPU the configs' own pipelines run.
DRY_PIPELINES: Dict[str, Dict[str, Any]] = {
    'cls': dict(
        train=[dict(type='LoadImageFromFile'),
               dict(type='RandomResizedCrop', scale=64, backend='pillow'),
               dict(type='PackInputs')],
        test=[dict(type='LoadImageFromFile'), dict(type='CenterCrop', crop_size=64),
              dict(type='PackInputs')]),
    'det': dict(
        train=[dict(type='LoadImageFromFile'),
               dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
               dict(type='Resize', scale=(96, 96), keep_ratio=True),
               dict(type='PackDetInputs')],
        test=[dict(type='LoadImageFromFile'), dict(type='Resize', scale=(96, 96), keep_ratio=True),
              dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                                    'img_shape', 'scale_factor'))]),
    'seg': dict(
        train=[dict(type='LoadImageFromFile'),
               dict(type='LoadAnnotations', reduce_zero_label=True),
               dict(type='RandomCrop', crop_size=DRY_CROP),
               dict(type='PackSegInputs')],
        test=[dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]),
}
# What else the dry run shrinks: the detector's proposals and RoIs, the segmentor's input size.
DRY_MODEL: Dict[str, Dict[str, Any]] = {
    'cls': {},
    'det': dict(train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                               rcnn=dict(sampler=dict(num=64))),
                test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100),
                              rcnn=dict(max_per_img=20))),
    'seg': dict(data_preprocessor=dict(size=DRY_CROP)),
}
PREDICT_HOOK_MODULE = 'gpu_check.predict_hook'


def tier2_config(task: str, data_root: str, dry_run: bool, predict_out: str):
    """The config of one tier-2 task: the real config, on the generated data, for one step.

    Args:
        task (str): ``'cls'``, ``'det'`` or ``'seg'``.
        data_root (str): Folder of the generated dataset.
        dry_run (bool): Tiny pipelines and proposal counts for a CPU.
        predict_out (str): Where :class:`gpu_check.predict_hook.GpuCheckPredictHook` writes
            its summary.

    Returns:
        mmengine.Config: The config to dump and train.
    """
    from mmengine.config import Config
    base, _, loop = TASKS[task]
    # Loaded without its custom imports: the training process imports them.
    cfg = Config.fromfile(osp.join(ROOT, base), import_custom_modules=False)
    root = data_root + ('/' if task == 'det' else '')
    options: Dict[str, Any] = {}
    for split in ('train', 'test'):
        options.update({f'{split}_dataloader.batch_size': 2,
                        f'{split}_dataloader.num_workers': 0,
                        f'{split}_dataloader.persistent_workers': False,
                        f'{split}_dataloader.dataset.data_root': root})
        if dry_run:
            options[f'{split}_dataloader.dataset.pipeline'] = copy.deepcopy(
                DRY_PIPELINES[task][split])
    options.update({'default_hooks.logger.interval': 1, 'default_hooks.checkpoint': None})
    if dry_run and DRY_MODEL[task]:
        options['model'] = copy.deepcopy(DRY_MODEL[task])
    cfg.merge_from_dict(options)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.train_cfg = (dict(type='EpochBasedTrainLoop', max_epochs=1) if loop == 'epoch' else
                     dict(type='IterBasedTrainLoop', max_iters=1))
    imports = list(cfg.get('custom_imports', {}).get('imports', []))
    cfg.custom_imports = dict(imports=imports + [PREDICT_HOOK_MODULE], allow_failed_imports=False)
    # Appended to the config's own hooks (RandomStateHook), which stay.
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
        dict(type='GpuCheckPredictHook', out=predict_out)]
    return cfg


def dist_demo_config(data_root: str):
    """The detection demo config on the generated data at ``data_root``, one epoch.

    Args:
        data_root (str): Folder of ``dualformer_mm.demo.synthetic.make_detection``'s data.

    Returns:
        mmengine.Config: The config to dump and train, validation included.
    """
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'det_dualformer_t_demo.py'),
                          import_custom_modules=False)
    root = data_root + '/'
    cfg.merge_from_dict({'train_dataloader.dataset.data_root': root,
                         'val_dataloader.dataset.data_root': root,
                         'val_evaluator.ann_file': root + 'annotations/instances_val.json',
                         'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1,
                         'default_hooks.logger.interval': 1})
    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    return cfg
