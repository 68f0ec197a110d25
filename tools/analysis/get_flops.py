#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Parameters and FLOPs of a model built from a config (paper Tables 1, 3 and 4).

Without ``--shape`` the input is each task's size in the paper: 224x224 for classifiers,
800x1280 for Mask R-CNN (Table 3), 512x2048 for UperNet (Table 4). For the repository's own
configs the paper's numbers are printed beside ours. Our ops' FLOP handles reach the analyzer
through mmengine's public ``FlopAnalyzer.set_op_handle`` (``count_complexity``); the toolboxes'
own ``get_flops.py`` tools count them through the table ``import dualformer_mm`` extends
(``dualformer_mm/ops/_flops.py``).

Examples:
    python tools/analysis/get_flops.py configs/mmpretrain/dualformer_s_in1k.py
    python tools/analysis/get_flops.py configs/mmdet/mask_rcnn_dualformer_s_1x.py
    python tools/analysis/get_flops.py configs/mmseg/upernet_dualformer_s_ade20k.py --shape 512
    python tools/analysis/get_flops.py --paper   # all four classifiers beside Table 1
"""
import argparse
import os.path as osp

from mmengine.config import Config, DictAction

from dualformer_mm.utils import PAPER_TABLE1, build_model_from_cfg, count_complexity
from dualformer_mm.utils.complexity import PAPER_TABLE3, PAPER_TABLE4

# The paper's input size and table for each toolbox (config default_scope).
TASKS = {
    'mmpretrain': ((224, 224), PAPER_TABLE1, 'Table 1'),
    'mmdet': ((800, 1280), PAPER_TABLE3, 'Table 3'),
    'mmseg': ((512, 2048), PAPER_TABLE4, 'Table 4'),
}
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Count parameters and FLOPs of a model.')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument('--shape', type=int, nargs='+',
                        help='input size: H W, or one number for a square (default: the '
                        "task's size in the paper: 224x224, 800x1280 or 512x2048)")
    parser.add_argument('--paper', action='store_true',
                        help='count the four ImageNet classifiers beside Table 1')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()
    if not args.paper and args.config is None:
        parser.error('give a CONFIG or --paper')
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f'--shape takes 1 or 2 numbers, got {args.shape}')
    return args


def paper_table() -> None:
    """Print measured and published parameters/FLOPs of the t/xs/s/b classifiers."""
    print(f"{'arch':<5}{'params (M)':>12}{'paper':>8}{'diff':>8}"
          f"{'GFLOPs':>10}{'paper':>8}{'diff':>8}")
    for arch, (p_params, p_flops) in PAPER_TABLE1.items():
        cfg = osp.join(ROOT, 'configs', 'mmpretrain', f'dualformer_{arch}_in1k.py')
        params, flops = count_complexity(build_model_from_cfg(cfg))
        params, flops = params / 1e6, flops / 1e9
        print(f'{arch:<5}{params:>12.2f}{p_params:>8.1f}{params / p_params - 1:>+8.1%}'
              f'{flops:>10.2f}{p_flops:>8.1f}{flops / p_flops - 1:>+8.1%}')


def main() -> None:
    args = parse_args()
    if args.paper:
        paper_table()
        return
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    default_shape, table, table_name = TASKS.get(scope, ((224, 224), {}, None))
    shape = tuple(args.shape) * (2 // len(args.shape)) if args.shape else default_shape
    model = build_model_from_cfg(cfg)
    params, flops = count_complexity(model, shape)
    print(f'config:  {args.config}\ninput:   1x3x{shape[0]}x{shape[1]}\n'
          f'params:  {params / 1e6:.2f} M\nFLOPs:   {flops / 1e9:.2f} G (multiply-adds)')
    backbone = cfg.model.get('backbone', {})
    arch = backbone.get('arch') if backbone.get('type') == 'DualFormer' else None
    if arch in table and shape == default_shape:
        p_params, p_flops = table[arch]
        print(f'paper:   {p_params} M, {p_flops} GFLOPs ({table_name}, DualFormer-{arch})')


if __name__ == '__main__':
    main()
