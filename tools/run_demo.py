#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""``make demo``: DualFormer-T on the paper's three tasks (section 4), on synthetic data.

Generates the deterministic shapes dataset (``dualformer_mm.demo``), then for each task trains
the demo config (which inherits the real config) through mmengine's Runner with the toolbox's
own datasets, metrics and visualizers: the classifier first, whose weights then initialise the
detector's and segmentor's backbone, as ImageNet pre-training does in the paper. Each task is
evaluated before and after training; the summary is printed and written as JSON and Markdown,
and PNGs of predictions and of the LSH partitions are written.

Example:
    python tools/run_demo.py                # the full demo, about ten minutes on 2 CPU cores
    python tools/run_demo.py --quick        # a few iterations per task (the test suite's run)
"""
import argparse
import json
import os
import os.path as osp
import shlex
import shutil
import sys
import time
from typing import Dict, List, Optional

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from dualformer_mm.demo import make_demo_datasets
from dualformer_mm.utils.environment import FIGURE_PACKAGES, describe_run
from dualformer_mm.visualization import (draw_partitions, partition_capacity,
                                         record_partitions)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

TASKS = {
    'cls': dict(config='configs/demo/cls_dualformer_t_demo.py',
                metrics={'accuracy/top1': 'top-1 (%)'}),
    'det': dict(config='configs/demo/det_dualformer_t_demo.py',
                metrics={'coco/bbox_mAP': 'box AP', 'coco/segm_mAP': 'mask AP'}),
    'seg': dict(config='configs/demo/seg_dualformer_t_demo.py',
                metrics={'mIoU': 'mIoU (%)'}),
}
DATA_VERSION = 'shapes-v1-seed0'  # bump when the generator changes, so old data is rebuilt


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train and evaluate DualFormer-T on three '
                                     'tasks with synthetic data.')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='where runs and PNGs go')
    parser.add_argument('--data-root', default='data/demo', help='where the data is written')
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS))
    parser.add_argument('--quick', action='store_true',
                        help='2 iterations per task on a small dataset (checks the pipeline)')
    parser.add_argument('--seed', type=int, default=0,
                        help="the runs' randomness.seed: weights, LSH hyperplanes, sampling and "
                        'augmentation (default 0)')
    return parser.parse_args(argv)


def ensure_data(root: str, quick: bool) -> None:
    """Generate the dataset unless ``root`` already holds this version of it."""
    stamp = osp.join(root, '.complete')
    version = f'{DATA_VERSION}-{"quick" if quick else "full"}'
    if osp.exists(stamp) and open(stamp).read() == version:
        print(f'[demo] using the data in {root}')
        return
    shutil.rmtree(root, ignore_errors=True)
    start = time.time()
    make_demo_datasets(root, seed=0, scale=0.05 if quick else 1.0)
    with open(stamp, 'w') as f:
        f.write(version)
    print(f'[demo] wrote the synthetic datasets to {root} in {time.time() - start:.0f} s')


def demo_config(task: str, args: argparse.Namespace, pretrained: Optional[str]) -> Config:
    """The task's demo config pointed at this run's data and work folders."""
    cfg = Config.fromfile(osp.join(ROOT, TASKS[task]['config']))
    cfg.work_dir = osp.join(args.work_dir, task)
    cfg.randomness = dict(seed=args.seed)
    sub = dict(cls='cls', det='coco', seg='ade')[task]
    data_root = osp.join(args.data_root, sub) + ('/' if task == 'det' else '')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    if task == 'det':
        ann = osp.join(data_root, 'annotations/instances_val.json')
        cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = ann
    loop = cfg.train_cfg
    length = 'max_iters' if 'max_iters' in loop else 'max_epochs'
    if args.quick:
        cfg.default_hooks.logger.interval = 1
        loop[length] = 2 if length == 'max_iters' else 1
        cfg.param_scheduler = []
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[loader].num_workers = 0
            cfg[loader].persistent_workers = False
    # Evaluated explicitly before and after training instead.
    loop.val_interval = loop[length] + 1
    if pretrained is not None:
        # The classifier's backbone stands in for the paper's ImageNet pre-training.
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=pretrained,
                                           prefix='backbone.')
    return cfg


def run_task(task: str, args: argparse.Namespace, pretrained: Optional[str]) -> Dict:
    """Evaluate, train and evaluate one task; return its metrics and checkpoint."""
    cfg = demo_config(task, args, pretrained)
    runner = Runner.from_cfg(cfg)
    start = time.time()
    # Evaluating first initialises the weights; train() then keeps them (mmengine initialises
    # a module once), so "before" is the very model training starts from.
    runner._init_model_weights()
    before = runner.val()
    runner.train()
    after = runner.val()
    checkpoint = osp.join(cfg.work_dir, f'{task}_dualformer_t_demo.pth')
    runner.save_checkpoint(cfg.work_dir, osp.basename(checkpoint), save_optimizer=False,
                           save_param_scheduler=False)
    keys = TASKS[task]['metrics']
    return dict(before={k: float(before[k]) for k in keys},
                after={k: float(after[k]) for k in keys},
                seconds=round(time.time() - start, 1), checkpoint=checkpoint,
                config=TASKS[task]['config'], model=runner.model, cfg=cfg)


def val_images(task: str, data_root: str, count: int) -> List[str]:
    """The first ``count`` held-out images of a task."""
    folder = dict(cls=osp.join(data_root, 'cls'), det=osp.join(data_root, 'coco', 'val'),
                  seg=osp.join(data_root, 'ade', 'images', 'validation'))[task]
    if task == 'cls':
        with open(osp.join(folder, 'meta', 'val.txt')) as f:
            # Several classes: every 4th line starts a new class in the balanced split.
            paths = [osp.join(folder, line.split()[0]) for line in f.read().splitlines()]
        return paths[:count]
    return sorted(osp.join(folder, n) for n in os.listdir(folder))[:count]


def visualize(task: str, result: Dict, args: argparse.Namespace, count: int = 3) -> List[str]:
    """Write PNGs of the trained model's predictions on held-out images."""
    import mmcv
    out_dir = osp.join(args.work_dir, 'vis')
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    images = val_images(task, args.data_root, count)
    cfg, ckpt = result['cfg'], result['checkpoint']
    if task == 'cls':
        from mmengine.registry import init_default_scope
        from mmpretrain.apis import ImageClassificationInferencer
        from mmpretrain.visualization import UniversalVisualizer
        init_default_scope('mmpretrain')  # its inferencer does not set the scope itself
        inferencer = ImageClassificationInferencer(cfg, pretrained=ckpt, device='cpu')
        visualizer = UniversalVisualizer()
        for i, (img, sample) in enumerate(zip(
                images, inferencer(images, return_datasamples=True))):
            out = osp.join(out_dir, f'cls_{i}.png')
            # Draw every class's score (there are 4: the "top-5" of ImageNet is all of them).
            visualizer.visualize_cls(mmcv.imread(img, channel_order='rgb'), sample,
                                     classes=inferencer.classes, draw_gt=False, draw_score=True,
                                     rescale_factor=4., out_file=out)
            paths.append(out)
    elif task == 'det':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=cfg, weights=ckpt, device='cpu', show_progress=False)
        for i, img in enumerate(images):
            vis = inferencer(img, return_vis=True, no_save_vis=True, no_save_pred=True,
                             pred_score_thr=0.5)['visualization'][0]
            out = osp.join(out_dir, f'det_{i}.png')
            mmcv.imwrite(mmcv.imrescale(vis, 3.0)[..., ::-1], out)
            paths.append(out)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=cfg, weights=ckpt, device='cpu')
        for i, img in enumerate(images):
            vis = inferencer(img, return_vis=True, show=False)['visualization']
            out = osp.join(out_dir, f'seg_{i}.png')
            mmcv.imwrite(mmcv.imrescale(vis, 3.0)[..., ::-1], out)
            paths.append(out)
    return paths


def visualize_partitions(result: Dict, args: argparse.Namespace) -> str:
    """Paint the LSH partitions of each stage of the trained segmentor on one image: one
    labelled panel per stage (its stride, MHPA's token grid, the partitions filled), under a
    title naming the model, the command, the machine and the versions."""
    import mmcv
    img_path = val_images('seg', args.data_root, 1)[0]
    image = mmcv.imread(img_path, channel_order='rgb')
    model = result['model']
    batch = model.data_preprocessor(
        dict(inputs=[torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)]), False)
    records = record_partitions(model.backbone, batch['inputs'])
    out = osp.join(args.work_dir, 'vis', 'partitions.png')
    command = shlex.join(['python', 'tools/run_demo.py', *sys.argv[1:]])
    title = (f"LSH partitions of the trained DualFormer-T segmentor ({result['config']}) on "
             f'{osp.basename(img_path)}\n'
             + describe_run(command, FIGURE_PACKAGES + ('mmsegmentation', )))
    draw_partitions(image, records, out, title=title,
                    capacity=partition_capacity(model.backbone))
    return out


def summarize(results: Dict[str, Dict], work_dir: str) -> str:
    """Print the before/after table and write it as JSON and Markdown."""
    rows = ['| task | metric | untrained | trained | train+eval time |', '|---|---|---|---|---|']
    for task, res in results.items():
        for key, label in TASKS[task]['metrics'].items():
            rows.append(f"| {task} | {label} | {res['before'][key]:.3f} | "
                        f"{res['after'][key]:.3f} | {res['seconds']:.0f} s |")
    table = '\n'.join(rows)
    summary = {task: {k: res[k] for k in ('before', 'after', 'seconds', 'checkpoint', 'config')}
               for task, res in results.items()}
    with open(osp.join(work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(osp.join(work_dir, 'summary.md'), 'w') as f:
        f.write('# DualFormer-T demo on synthetic data\n\n' + table + '\n')
    return table


def main() -> None:
    args = parse_args()
    os.chdir(ROOT)
    os.makedirs(args.work_dir, exist_ok=True)
    ensure_data(args.data_root, args.quick)
    results: Dict[str, Dict] = {}
    pictures: List[str] = []
    pretrained = None
    for task in args.tasks:
        print(f'\n[demo] ===== {task}: {TASKS[task]["config"]} =====', flush=True)
        results[task] = run_task(task, args, pretrained if task != 'cls' else None)
        if task == 'cls':
            pretrained = results[task]['checkpoint']
        pictures += visualize(task, results[task], args)
        if task == 'seg':
            pictures.append(visualize_partitions(results[task], args))
    table = summarize(results, args.work_dir)
    print('\n[demo] metrics before and after training (held-out images):\n' + table)
    print(f"\n[demo] summary: {osp.join(args.work_dir, 'summary.json')} and summary.md")
    print('[demo] pictures:\n' + '\n'.join(f'  {p}' for p in pictures))


if __name__ == '__main__':
    main()
