#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Turn an ImageNet DualFormer classifier checkpoint into a backbone checkpoint.

Detection and segmentation (paper sections 4.2 and 4.3) start from the ImageNet backbone. The
output holds only tensors under ``backbone.*`` keys (no optimizer, no message hub), so it loads
with ``torch.load(weights_only=True)`` through the configs'
``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='backbone.')``. The keys are checked
against a DualFormer of the given size with all four outputs: the classifier only has the
output norm of its last stage, so ``norm0``-``norm2`` are reported missing and start fresh.

Example:
    python tools/model_converters/dualformer_cls_to_backbone.py \\
        work_dirs/dualformer_s_in1k/epoch_300.pth checkpoints/dualformer_s_in1k.pth --arch s
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List, Sequence

import torch

# Importing dualformer_mm also allow-lists the few non-tensor types of mmengine checkpoints
# (dualformer_mm.utils.checkpoint), so training checkpoints load with weights_only=True.
from dualformer_mm import DualFormer

ARCHS = ('t', 'xs', 's', 'b')


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint (``state_dict`` of an mmengine file, or a bare dict)."""
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f'{path} holds no state dict')
    # Checkpoints saved from a DistributedDataParallel module carry a 'module.' prefix.
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


def convert(state: Dict[str, torch.Tensor], arch: str,
            out_indices: Sequence[int] = (0, 1, 2, 3)) -> Dict[str, List[str]]:
    """Split a classifier state dict into backbone weights and a key report.

    Args:
        state (dict): Classifier state dict (keys ``backbone.*``, ``head.*``, ...) or a bare
            backbone state dict.
        arch (str): DualFormer size the weights must fit.
        out_indices (Sequence[int]): Outputs of the target backbone. Defaults to all four.

    Returns:
        dict: ``weights`` (backbone tensors, unprefixed) and the lists ``missing``,
        ``unexpected`` (inside the backbone), ``mismatched`` (shapes) and ``dropped``
        (non-backbone keys such as the classification head).
    """
    if arch not in ARCHS:
        raise ValueError(f'arch must be one of {ARCHS}, got {arch!r}')
    if any(k.startswith('backbone.') for k in state):
        weights = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
        dropped = sorted(k for k in state if not k.startswith('backbone.'))
    else:
        weights, dropped = dict(state), []
    target = DualFormer(arch=arch, out_indices=out_indices, init_cfg=None).state_dict()
    mismatched = sorted(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}'
                        for k, v in weights.items() if k in target and v.shape != target[k].shape)
    return dict(weights=weights,
                missing=sorted(set(target) - set(weights)),
                unexpected=sorted(set(weights) - set(target)),
                mismatched=mismatched,
                dropped=dropped)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Classifier checkpoint -> backbone checkpoint')
    parser.add_argument('src', help='ImageNet classifier checkpoint (mmpretrain)')
    parser.add_argument('dst', help='output backbone checkpoint')
    parser.add_argument('--arch', choices=ARCHS, required=True, help='DualFormer size')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    report = convert(load_state_dict(args.src), args.arch)
    for name, why in (('dropped', 'not backbone weights (e.g. the classification head)'),
                      ('missing', 'in the backbone, absent from the checkpoint: initialised '
                                  'fresh'),
                      ('unexpected', 'in the checkpoint, unknown to the backbone'),
                      ('mismatched', 'shape differs')):
        print(f'{name} keys ({len(report[name])}): {why}')
        for key in report[name]:
            print(f'    {key}')
    if report['unexpected'] or report['mismatched']:
        print(f'error: the checkpoint does not fit DualFormer-{args.arch}; nothing written',
              file=sys.stderr)
        return 1
    weights = {f'backbone.{k}': v for k, v in report['weights'].items()}
    torch.save({'state_dict': weights,
                'meta': {'arch': args.arch, 'source': osp.basename(args.src),
                         'missing_keys': report['missing']}}, args.dst)
    print(f'saved {len(weights)} backbone tensors to {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
