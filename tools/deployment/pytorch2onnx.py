#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Export a DualFormer model of a config to ONNX and check it in ONNX Runtime.

Parts (``--part``; the default is the config's task):

* ``classifier`` (mmpretrain configs): the logits.
* ``segmentor`` (mmseg configs): UperNet's whole inference, the logits resized to the input
  (their argmax over classes is the label map).
* ``detector`` (mmdet configs): the backbone and FPN maps. Mask R-CNN's RPN and RoI heads
  (NMS, RoIAlign) need mmdeploy's deployment ops and are not exported.
* ``backbone`` (any config): DualFormer's four maps, strides 4 to 32.

The input is a batch of normalised images named ``images`` (the config's data preprocessor
mean and std are applied before). The graph is first exported with the partition codes of
every MHPA as extra outputs; the file written is that graph without them. The check runs it in
ONNX Runtime on seeded random images and the toolbox's own PyTorch computation with exactly the
partitions ONNX Runtime chose, so that a token within rounding of an LSH hyperplane, which the
two runtimes may put on different sides, cannot make a correct export fail. It prints, for
every size checked, the largest absolute difference of the outputs, the tokens whose own
PyTorch code differs from ONNX Runtime's (per MHPA and in total) with how near a plane they
lay, and the tokens, partitions and hyperplane margin the MHPAs saw. It exits with status 1
when the difference exceeds ``--atol``, or when a code differs on a plane no token was near
(a wrong hash). ``--dynamic`` makes batch, height and width symbolic (sides multiples of 32)
and adds a second size to the check; ``--scatter-elements`` rewrites the partition sums into
the form TensorRT's ONNX parser takes. Opset, operators and TensorRT notes:
docs/deployment.md.

Examples:
    python tools/deployment/pytorch2onnx.py configs/mmpretrain/dualformer_s_in1k.py \\
        epoch_300.pth --out dualformer_s.onnx --shape 224 224
    python tools/deployment/pytorch2onnx.py configs/mmseg/upernet_dualformer_s_ade20k.py \\
        iter_80000.pth --out upernet_s.onnx --shape 512 512 --dynamic
    python tools/deployment/pytorch2onnx.py configs/mmdet/mask_rcnn_dualformer_t_1x.py \\
        --part backbone --out backbone_t.onnx --shape 800 1280
"""
import argparse
import os
import os.path as osp
import sys
import tempfile
import time
from typing import List, Optional

import torch
from mmengine.config import DictAction

from dualformer_mm.deployment import (DETECTOR_HEADS_NOTE, DYNAMIC_MULTIPLE, EXPORTERS, OPSET,
                                      PARTS, DeploymentError, build_target, check, check_sizes,
                                      export_checked, op_types, session, strip_codes)

DEFAULT_ATOL = 1e-3


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Export a DualFormer classifier, segmentor, detector backbone+FPN or '
        'backbone to ONNX (opset 18) and check it against PyTorch in ONNX Runtime.',
        epilog=DETECTOR_HEADS_NOTE + ' See docs/deployment.md.')
    parser.add_argument('config', help='config file (configs/mmpretrain, mmseg or mmdet)')
    parser.add_argument('checkpoint', nargs='?',
                        help='weights to load (default: random weights, enough to check)')
    parser.add_argument('--out', required=True, help='the ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='input height and width of the export')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default 1)')
    parser.add_argument('--part', default='auto', choices=('auto', ) + PARTS,
                        help="what to export (default: the config's task; 'detector' is the "
                        'backbone and FPN)')
    parser.add_argument('--dynamic', action='store_true',
                        help='symbolic batch, height and width; checked at a second size')
    parser.add_argument('--check-shape', type=int, nargs=2, action='append', metavar=('H', 'W'),
                        help='check at this size instead of the automatic second size '
                        '(repeatable; needs --dynamic)')
    parser.add_argument('--exporter', default='auto', choices=EXPORTERS,
                        help='dynamo (torch >= 2.5) or torchscript; auto picks dynamo where '
                        'this torch has it')
    parser.add_argument('--scatter-elements', action='store_true',
                        help='rewrite ScatterND with a reduction as the equivalent '
                        "ScatterElements, which TensorRT's ONNX parser takes (docs/deployment.md)")
    parser.add_argument('--atol', type=float, default=DEFAULT_ATOL,
                        help=f'largest accepted |onnxruntime - pytorch| (default {DEFAULT_ATOL})')
    parser.add_argument('--no-check', action='store_true', help='export only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if args.check_shape and not args.dynamic:
        parser.error('--check-shape needs --dynamic (a static export takes only --shape)')
    if min(args.shape) < 1 or args.batch < 1:
        parser.error(f'--shape and --batch must be positive, got {args.shape} and {args.batch}')
    return args


def _check_shapes(args: argparse.Namespace, divisor: int) -> None:
    """Refuse sizes the export cannot take, naming what it takes."""
    if any(s % divisor for s in args.shape):
        raise DeploymentError(f'--shape {args.shape[0]} {args.shape[1]}: this model takes '
                              f'sides that are multiples of {divisor} (its data preprocessor '
                              'pads to them)')
    if args.dynamic:
        for h, w in [args.shape] + (args.check_shape or []):
            if h % DYNAMIC_MULTIPLE or w % DYNAMIC_MULTIPLE or min(h, w) < 2 * DYNAMIC_MULTIPLE:
                raise DeploymentError(
                    f'{h}x{w}: --dynamic takes sides that are multiples of {DYNAMIC_MULTIPLE}, '
                    f'at least {2 * DYNAMIC_MULTIPLE} (MHPA pads other sizes, a branch the '
                    'exported graph holds for one case only); pad the images to it')


def _check(args: argparse.Namespace, target, checked: str) -> bool:
    """Check ``checked`` at every size; print the report; whether every size passed."""
    sess = session(checked)
    passed = True
    for i, (h, w) in enumerate(check_sizes(args.shape, args.dynamic, target.size_divisor,
                                           args.check_shape)):
        # Later sizes of a dynamic export also change the batch.
        batch = args.batch + (i > 0)
        images = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(i))
        result = check(target, checked, images, sess)
        ok = result.passed(args.atol)
        passed &= ok
        verdict = 'ok' if ok else (
            'CODES DIFFER away from any near tie: the exported hash is not the model\'s'
            if not result.codes_agree else f'ABOVE --atol {args.atol}')
        print(f'  check {result.describe()}: {verdict}')
        for line in result.describe_codes():
            print(f'    {line}')
    return passed


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        _check_shapes(args, 1)
        try:
            target = build_target(args.config, args.checkpoint, args.part, args.cfg_options)
        except (ValueError, ImportError) as err:
            raise DeploymentError(str(err)) from None
        _check_shapes(args, target.size_divisor)
        print(f'{target.description} of {args.config}')
        for note in target.notes or []:
            print(f'  {note}')
        # A dynamic export traces a batch of 2: torch.export fixes any dimension of size 1.
        images = torch.randn(max(args.batch, 2) if args.dynamic else args.batch, 3, *args.shape)
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with tempfile.TemporaryDirectory(prefix='pytorch2onnx_') as tmp:
            checked = osp.join(tmp, 'with_codes.onnx')
            start = time.perf_counter()
            exporter, code_names = export_checked(target, images, checked, args.dynamic,
                                                  args.exporter)
            if args.scatter_elements:
                from dualformer_mm.deployment.tensorrt import rewrite_file
                rewritten, kept = rewrite_file(checked)
            strip_codes(checked, args.out)
            size_mb = osp.getsize(args.out) / 2**20
            print(f'wrote {args.out} ({size_mb:.1f} MB) with the {exporter} exporter, opset '
                  f'{OPSET}, {"dynamic" if args.dynamic else "static"} shape, in '
                  f'{time.perf_counter() - start:.1f} s')
            if args.scatter_elements:
                print(f'  {rewritten} ScatterND nodes rewritten as ScatterElements'
                      + (f', {kept} left (other index shapes)' if kept else ''))
            print('  operators: ' + ', '.join(f'{k} {v}'
                                              for k, v in op_types(args.out).items()))
            if args.no_check:
                return 0
            print(f'  checked as the same graph with the partition codes of its '
                  f'{len(code_names)} MHPAs as outputs, PyTorch using those codes')
            return int(not _check(args, target, checked))
    except DeploymentError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
