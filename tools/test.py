#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Evaluate a checkpoint of any dualformer-mm config (paper Tables 2, 3 and 4 metrics).

The config's ``default_scope`` picks the toolbox and its evaluator (top-1 accuracy, COCO box
and mask AP, mIoU). Without CUDA the run uses the CPU, with gloo when distributed.

Examples:
    python tools/test.py configs/mmseg/upernet_dualformer_s_ade20k.py CKPT.pth
    bash tools/dist_test.sh configs/mmdet/mask_rcnn_dualformer_s_1x.py CKPT.pth 8 --out res.pkl
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from dualformer_mm.utils.runner import (LAUNCHERS, load_config, require_datasets, setup_device,
                                        setup_scope, teardown_distributed)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a DualFormer model with mmengine.')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation log and metrics go')
    parser.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl or .pickle file, got {args.out}')
    return args


def run_test(args: argparse.Namespace) -> None:
    """Build the Runner from the config and the command line, load the checkpoint and test."""
    cfg = load_config(args.config, args.cfg_options)
    require_datasets(cfg, ('test_dataloader', ))
    cfg.launcher = args.launcher
    setup_scope(cfg)
    messages = setup_device(cfg, args.launcher)
    # The checkpoint replaces every weight: no ImageNet initialisation is wanted here.
    if isinstance(cfg.model.get('backbone'), dict):
        cfg.model.backbone.pop('init_cfg', None)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    for message in messages:
        runner.logger.info(message)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


def main() -> None:
    # As in tools/train.py: the Runner is unreferenced once run_test() has returned.
    run_test(parse_args())
    teardown_distributed()


if __name__ == '__main__':
    main()
