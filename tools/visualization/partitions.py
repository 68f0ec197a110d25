#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Draw the LSH partitions of Multi-Head Partition Attention on an image (paper section 3.2;
"Partition Visualization" of section 4.4, Figure 6).

Builds the model of any DualFormer config of this repository (configs/mmpretrain, mmdet or
mmseg), loads the checkpoint if one is given, normalises the image with the config's data
preprocessor, records the partition code of every token of every MHPA module in one forward
pass and paints them over the image: one panel per stage (first block, head 1), or per head
(``--all-heads``) and per block (``--all-blocks``), each labelled with its stage and stride,
block, head, MHPA's token grid and the partitions its tokens fill of those it has, under a
title naming the config, the command, the machine and the versions. Without ``--img`` the
image is a synthetic scene of the demo's shapes.

Figure 6 shows a trained model at epochs 0, 150 and 300; without ``--checkpoint`` the
partitions are those of a randomly initialised network (the "epoch 0" column).

Examples:
    python tools/visualization/partitions.py configs/mmpretrain/dualformer_t_in1k.py \\
        --out work_dirs/vis/partitions.png
    python tools/visualization/partitions.py configs/mmseg/upernet_dualformer_s_ade20k.py \\
        --checkpoint seg.pth --img bird.jpg --all-heads --out bird_heads.png --json bird.json
"""
import argparse
import json
import os
import os.path as osp
import shlex
import sys
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from dualformer_mm.utils.environment import describe_run
from dualformer_mm.visualization.partitions import (
    build_backbone, config_normalization, draw_partition_grid, partition_capacity,
    preprocess_image, record_partitions, synthetic_image)

DEFAULT_SIZE = 224  # the paper's ImageNet resolution


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Draw the LSH partitions of every DualFormer stage on an image (Figure 6).')
    parser.add_argument('config', help='a DualFormer config (mmpretrain, mmdet or mmseg)')
    parser.add_argument('--checkpoint', help='checkpoint (classifier, detector, segmentor or '
                        'backbone-only); random initialisation without it')
    parser.add_argument('--img', help='RGB image (a synthetic scene without it)')
    parser.add_argument('--size', type=int, nargs='+', metavar='N',
                        help='input size: H W, or one number for a square (default: an '
                        f'--img keeps its aspect with a {DEFAULT_SIZE} px shorter side; the '
                        f'synthetic image is {DEFAULT_SIZE}x{DEFAULT_SIZE})')
    parser.add_argument('--out', default='work_dirs/vis/partitions.png', help='PNG to write')
    parser.add_argument('--json', help='also write the drawn panels (module, stage, stride, '
                        'block, head, grid, partitions used and available, title) as JSON')
    parser.add_argument('--all-heads', action='store_true', help='one panel per head')
    parser.add_argument('--all-blocks', action='store_true', help='every block of each stage')
    parser.add_argument('--alpha', type=float, default=0.55,
                        help='opacity of the partition colours, in [0, 1] (default 0.55)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic image')
    args = parser.parse_args(argv)
    if args.size is not None:
        if len(args.size) not in (1, 2) or min(args.size) < 32:
            parser.error(f'--size takes H W or one number, each >= 32, got {args.size}')
    if not 0 <= args.alpha <= 1:
        parser.error(f'--alpha must be in [0, 1], got {args.alpha}')
    for name in ('config', 'img', 'checkpoint'):
        path = getattr(args, name)
        if path and not osp.isfile(path):
            parser.error(f'{name if name == "config" else "--" + name}: no such file {path!r}')
    return args


def input_size(args: argparse.Namespace, shape: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """(H, W) from ``--size``, or from the image's aspect ratio."""
    if args.size:
        return (args.size[0], args.size[-1])
    if shape is None:
        return (DEFAULT_SIZE, DEFAULT_SIZE)
    height, width = shape
    scale = DEFAULT_SIZE / min(height, width)
    return (max(32, round(height * scale)), max(32, round(width * scale)))


def load_image(args: argparse.Namespace) -> np.ndarray:
    """The RGB uint8 input at the requested size."""
    if not args.img:
        return synthetic_image(input_size(args, None), seed=args.seed)
    with Image.open(args.img) as img:
        img = img.convert('RGB')
        height, width = input_size(args, (img.height, img.width))
        return np.asarray(img.resize((width, height), Image.BILINEAR))


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    backbone = build_backbone(args.config, args.checkpoint)
    mean, std, rgb = config_normalization(args.config)
    image = load_image(args)
    records = record_partitions(backbone, preprocess_image(image, mean, std, rgb))
    weights = osp.basename(args.checkpoint) if args.checkpoint else 'random init'
    command = shlex.join(['python', 'tools/visualization/partitions.py',
                          *(sys.argv[1:] if argv is None else argv)])
    title = (f'{osp.basename(args.config)} ({weights}), '
             f'{image.shape[0]}x{image.shape[1]} input\n{describe_run(command)}')
    panels = draw_partition_grid(image, records, args.out, all_heads=args.all_heads,
                                 all_blocks=args.all_blocks, alpha=args.alpha, title=title,
                                 capacity=partition_capacity(backbone))
    if not args.checkpoint:
        print('note: no --checkpoint, so these are the partitions of a randomly initialised '
              'network (Figure 6 at epoch 0), not of a trained one')
    for panel in panels:
        print(f"{panel['module']} head {panel['head']}: {panel['num_partitions']} partitions "
              f"on a {panel['grid'][0]}x{panel['grid'][1]} grid")
    print(f'wrote {args.out} ({len(panels)} panels)')
    if args.json:
        meta = dict(config=args.config, checkpoint=args.checkpoint, image=args.img or 'synthetic',
                    input_size=list(image.shape[:2]), out=args.out, panels=panels)
        folder = osp.dirname(osp.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(meta, f, indent=2)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
