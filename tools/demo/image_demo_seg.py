#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Segment an image with a DualFormer UperNet (paper section 4.3) and save the overlay PNG.

Uses mmseg's ``init_model`` and ``inference_model``; without ``--checkpoint`` the weights are
random (useful only to check an installation).

Example:
    python tools/demo/image_demo_seg.py demo.jpg configs/mmseg/upernet_dualformer_s_ade20k.py \\
        --checkpoint upernet_dualformer_s_ade20k.pth --out-file seg.png
"""
import argparse

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='DualFormer semantic segmentation demo')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='mmseg config file')
    parser.add_argument('--checkpoint', help='checkpoint file (random weights without it)')
    parser.add_argument('--out-file', default='seg_result.png', help='output PNG')
    parser.add_argument('--opacity', type=float, default=0.5, help='mask opacity in (0, 1]')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    if not 0 < args.opacity <= 1:
        parser.error(f'--opacity must be in (0, 1], got {args.opacity}')
    from dualformer_mm.utils import require_toolbox_config
    require_toolbox_config(parser, args.config, 'mmseg')
    return args


def main() -> None:
    args = parse_args()
    from mmseg.apis import inference_model, init_model, show_result_pyplot

    model = init_model(args.config, args.checkpoint, device=args.device)
    if not hasattr(model, 'dataset_meta'):
        # Class names and palette normally come from the checkpoint; without one, from the
        # dataset the config trains on.
        from mmseg.registry import DATASETS
        dataset_type = model.cfg.train_dataloader.dataset.type
        model.dataset_meta = dict(DATASETS.get(dataset_type).METAINFO)
    result = inference_model(model, args.img)
    classes = result.pred_sem_seg.data.unique().tolist()
    print(f'{args.img}: {len(classes)} classes predicted')
    show_result_pyplot(model, args.img, result, opacity=args.opacity, show=False,
                       out_file=args.out_file)
    print(f'saved {args.out_file}')


if __name__ == '__main__':
    main()
