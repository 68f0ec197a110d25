#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Train any dualformer-mm config: classification, detection or segmentation (paper section 4).

The config's ``default_scope`` (``mmpretrain``, ``mmdet`` or ``mmseg``) picks the toolbox; its
``custom_imports`` registers DualFormer. On a machine without CUDA the same command runs on
CPU, distributed runs with the gloo backend (see ``dualformer_mm/utils/runner.py``).

Examples:
    python tools/train.py configs/mmdet/mask_rcnn_dualformer_s_1x.py
    bash tools/dist_train.sh configs/mmseg/upernet_dualformer_s_ade20k.py 8 --amp
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from dualformer_mm.utils.runner import (LAUNCHERS, load_config, require_datasets, setup_device,
                                        setup_scope, teardown_distributed)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a DualFormer model with mmengine.')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or without a path from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (AmpOptimWrapper, dynamic loss scale)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual batch size over auto_scale_lr.'
                        'base_batch_size')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. '
                        'model.backbone.init_cfg.checkpoint=PATH)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def train(args: argparse.Namespace) -> None:
    """Build the Runner from the config and the command line, and train."""
    cfg = load_config(args.config, args.cfg_options)
    require_datasets(cfg, ('train_dataloader', 'val_dataloader'))
    cfg.launcher = args.launcher
    setup_scope(cfg)
    messages = setup_device(cfg, args.launcher)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            messages.append('AMP is already enabled in the config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError(f'--auto-scale-lr needs auto_scale_lr.base_batch_size in '
                             f'{args.config}')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    for message in messages:
        runner.logger.warning(message) if message.startswith('WARNING') \
            else runner.logger.info(message)
    runner.train()


def main() -> None:
    # train() has returned, so the Runner and its DistributedDataParallel wrapper are
    # unreferenced: teardown_distributed() can free the process group and join its threads.
    train(parse_args())
    teardown_distributed()


if __name__ == '__main__':
    main()
