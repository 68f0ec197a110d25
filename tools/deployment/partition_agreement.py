#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Whether partition ties change what a deployed DualFormer predicts, on your images.

A token within float32 rounding of an LSH hyperplane can land in another partition in
another runtime, and the outputs then differ by more than rounding. This tool exports the
classifier or segmentor (UperNet's whole inference) of CONFIG with CHECKPOINT to ONNX and runs
every image of --images (folders and files; the config's test pipeline and data preprocessor
make the inputs, --resize first brings every image to one size) in PyTorch with the fused op
kernels (``ext``), in PyTorch with the reference ops (``reference``) and in ONNX Runtime, each
computing its own partitions, as users run them. Printed per pair of runtimes: the images
whose top-1 class (classifier) or every pixel label (segmentor) agrees, the pixels with
another label, the largest absolute difference of the outputs, and the images and fraction of
tokens whose partition code differs; with the smallest hyperplane margin (the |cos| of a token
to a plane) and the images with a near tie. --out writes every image's figures, the summary
and the environment as JSON. See docs/deployment.md ("Partition ties").

Example:
    python tools/deployment/partition_agreement.py configs/demo/seg_dualformer_t_demo.py \\
        work_dirs/demo/seg/seg_dualformer_t_demo.pth \\
        --images data/demo/ade/images/validation --out work_dirs/agreement_seg.json
"""
import argparse
import json
import sys
import tempfile
from typing import List, Optional

from mmengine.config import DictAction

from dualformer_mm.deployment import EXPORTERS, DeploymentError, build_target
from dualformer_mm.deployment.agreement import RUNTIMES, find_images, measure, table


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Agreement of PyTorch (ext and reference op backends) and ONNX Runtime '
        'on a DualFormer classifier or segmentor, each runtime with its own LSH partitions.')
    parser.add_argument('config', help='an mmpretrain or mmseg config')
    parser.add_argument('checkpoint', help='its trained weights')
    parser.add_argument('--images', required=True, nargs='+', metavar='PATH',
                        help='folders of images (searched at every depth) and image files')
    parser.add_argument('--out', help='write the report as JSON here')
    parser.add_argument('--limit', type=int, help='the first N images only')
    parser.add_argument('--resize', type=int, nargs=2, metavar=('H', 'W'),
                        help='resize every image to H x W after loading (before the '
                        "config's test transforms)")
    parser.add_argument('--runtimes', nargs='+', default=list(RUNTIMES), choices=RUNTIMES,
                        help='at least two (default: all three)')
    parser.add_argument('--exporter', default='auto', choices=EXPORTERS,
                        help='the ONNX exporter (default: dynamo where this torch has it)')
    parser.add_argument('--work-dir',
                        help='keep the ONNX files here (default: a temporary folder)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f'--limit must be positive, got {args.limit}')
    if args.resize is not None and min(args.resize) < 1:
        parser.error(f'--resize must be positive, got {args.resize}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        paths = find_images(args.images)[:args.limit]
        try:
            target = build_target(args.config, args.checkpoint, cfg_options=args.cfg_options)
        except (ValueError, ImportError) as err:
            raise DeploymentError(str(err)) from None
        print(f'{target.description} of {args.config}; {len(paths)} images')
        for note in target.notes or []:
            print(f'  {note}')

        def progress(i: int, result) -> None:
            pair, worst = min(result.pairs.items(), key=lambda kv: kv[1].labels)
            margin = 'no LSH' if result.margin is None else f'margin {result.margin:.2g}'
            print(f'  [{i + 1}/{len(paths)}] {result.path}: {margin}; lowest label agreement '
                  f'{worst.labels:.4g} ({pair}), largest code disagreement '
                  f'{max(p.codes for p in result.pairs.values()):.3g}', flush=True)

        with tempfile.TemporaryDirectory(prefix='partition_agreement_') as tmp:
            report = measure(target, args.config, paths, args.work_dir or tmp, args.runtimes,
                             args.exporter, args.cfg_options, args.resize, progress)
        report.update(config=args.config, checkpoint=args.checkpoint, sources=args.images,
                      resize=args.resize)
        print(table(report['summary']))
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(report, f, indent=1)
            print(f'wrote {args.out}')
        return 0
    except DeploymentError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
