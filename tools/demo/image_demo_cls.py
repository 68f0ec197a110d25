#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Classify an image with a DualFormer classifier (paper section 4.1) and save the picture.

Uses mmpretrain's ``ImageClassificationInferencer``; without ``--checkpoint`` the weights are
random (useful only to check an installation).

Example:
    python tools/demo/image_demo_cls.py demo.jpg configs/mmpretrain/dualformer_s_in1k.py \\
        --checkpoint dualformer_s_in1k.pth --out-file cls.png
"""
import argparse

import mmcv
import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='DualFormer image classification demo')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='mmpretrain config file')
    parser.add_argument('--checkpoint', help='checkpoint file (random weights without it)')
    parser.add_argument('--out-file', default='cls_result.png', help='output PNG')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    from dualformer_mm.utils import require_toolbox_config
    require_toolbox_config(parser, args.config, 'mmpretrain')
    return args


def main() -> None:
    args = parse_args()
    from mmengine.registry import init_default_scope
    from mmpretrain.apis import ImageClassificationInferencer
    from mmpretrain.visualization import UniversalVisualizer

    # mmpretrain's inferencer builds its pipeline in the current default scope, which may be
    # another toolbox's when several are used in one process (mmdet's and mmseg's set theirs).
    init_default_scope('mmpretrain')

    inferencer = ImageClassificationInferencer(
        args.config, pretrained=args.checkpoint or False, device=args.device)
    sample = inferencer(args.img, return_datasamples=True)[0]
    label = int(sample.pred_label)
    classes = inferencer.classes
    name = classes[label] if classes else str(label)
    print(f'{args.img}: class {label} ({name}), score {float(sample.pred_score[label]):.4f}')
    image = mmcv.imread(args.img, channel_order='rgb')
    UniversalVisualizer().visualize_cls(image, sample, classes=classes, draw_gt=False,
                                        out_file=args.out_file)
    print(f'saved {args.out_file}')


if __name__ == '__main__':
    main()
