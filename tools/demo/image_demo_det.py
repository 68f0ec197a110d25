#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Detect and segment objects with a DualFormer Mask R-CNN (paper section 4.2), save a PNG.

Uses mmdet's ``DetInferencer``; without ``--checkpoint`` the weights are random (useful only to
check an installation) and the COCO class names are used.

Example:
    python tools/demo/image_demo_det.py demo.jpg configs/mmdet/mask_rcnn_dualformer_s_1x.py \\
        --checkpoint mask_rcnn_dualformer_s_1x.pth --out-file det.png
"""
import argparse

import mmcv
import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='DualFormer detection demo')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='mmdet config file')
    parser.add_argument('--checkpoint', help='checkpoint file (random weights without it)')
    parser.add_argument('--out-file', default='det_result.png', help='output PNG')
    parser.add_argument('--score-thr', type=float, default=0.3, help='box score threshold')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    from dualformer_mm.utils import require_toolbox_config
    require_toolbox_config(parser, args.config, 'mmdet')
    return args


def main() -> None:
    args = parse_args()
    from mmdet.apis import DetInferencer

    inferencer = DetInferencer(model=args.config, weights=args.checkpoint, device=args.device)
    result = inferencer(args.img, return_vis=True, no_save_vis=True, no_save_pred=True,
                        pred_score_thr=args.score_thr)
    scores = result['predictions'][0]['scores']
    kept = sum(score >= args.score_thr for score in scores)
    print(f'{args.img}: {kept} of {len(scores)} detections with score >= {args.score_thr}')
    mmcv.imwrite(result['visualization'][0][..., ::-1], args.out_file)  # RGB -> BGR
    print(f'saved {args.out_file}')


if __name__ == '__main__':
    main()
