#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Latency of the exported models: ONNX Runtime against PyTorch eager, DualFormer beside Swin-T.

For each task (``classifier`` at 224x224, ``segmentor``, UperNet's whole inference, at
512x512) and model, the config's model is exported with ``pytorch2onnx.py``'s code
(:mod:`dualformer_mm.deployment`; static shape, batch 1, random weights), checked in ONNX
Runtime against PyTorch, and both are timed on the same input with the same number of
threads, interleaved (:func:`dualformer_mm.benchmark.measure.time_interleaved`: warm-up, then
rounds that run every model once in turn; medians). Swin-T comes from mmpretrain's and
mmseg's own configs and is exported the same way. Printed: ms per
image, ONNX Runtime's speed-up over PyTorch, and every time over Swin-T's in the same runtime.
A benchmark for people to read, not a test: nothing is asserted.

Example:
    python tools/deployment/benchmark_onnx.py --threads 2 --repeat 10
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

import torch

from dualformer_mm.benchmark.measure import median, time_interleaved
from dualformer_mm.benchmark.options import Settings
from dualformer_mm.benchmark.output import describe_environment
from dualformer_mm.deployment import build_target, check, export, session

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
REFERENCE = 'swin-t'
#: model -> task -> config.
CONFIGS: Dict[str, Dict[str, str]] = {
    **{f'dualformer-{a}': {
        'classifier': osp.join(ROOT, f'configs/mmpretrain/dualformer_{a}_in1k.py'),
        'segmentor': osp.join(ROOT, f'configs/mmseg/upernet_dualformer_{a}_ade20k.py')}
       for a in ('t', 'xs', 's', 'b')},
    REFERENCE: {
        'classifier': 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
        'segmentor': 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
                     'ade20k-512x512.py'},
}
SIZES = {'classifier': (224, 224), 'segmentor': (512, 512)}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['dualformer-s', REFERENCE],
                        choices=sorted(CONFIGS), help='models (default: dualformer-s swin-t)')
    parser.add_argument('--tasks', nargs='+', default=list(SIZES), choices=list(SIZES),
                        help='tasks (default: both)')
    parser.add_argument('--cls-size', type=int, default=224, help='classifier input side')
    parser.add_argument('--seg-size', type=int, nargs=2, default=[512, 512],
                        metavar=('H', 'W'), help='segmentor input size')
    parser.add_argument('--threads', type=int, default=os.cpu_count(),
                        help='threads of PyTorch and of ONNX Runtime (default: all cores)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls per model')
    parser.add_argument('--repeat', type=int, default=10, help='timed rounds')
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'benchmark_onnx'),
                        help='where the ONNX files go')
    parser.add_argument('--reuse', action='store_true',
                        help='keep the ONNX files of an earlier run in --work-dir (the check '
                        'still compares each with the model)')
    parser.add_argument('--json', help='write the results and the environment here')
    args = parser.parse_args(argv)
    if min(args.threads, args.repeat) < 1 or args.warmup < 0:
        parser.error('--threads and --repeat must be >= 1 and --warmup >= 0')
    return args


def run_task(task: str, size, models: List[str], args: argparse.Namespace,
             settings: Settings) -> List[Dict]:
    """Export, check and time every model of one task; one row per model."""
    x = torch.randn(1, 3, *size)
    fns, rows = {}, []
    for name in models:
        torch.manual_seed(0)  # the same random weights in every run, so --reuse can hold
        target = build_target(CONFIGS[name][task], part=task)
        path = osp.join(args.work_dir, f'{name}_{task}_{size[0]}x{size[1]}.onnx')
        if not (args.reuse and osp.exists(path)):
            export(target.module, x, path, target.output_names)
        sess = session(path, threads=args.threads)
        result = check(target, path, x, sess)
        print(f'{name} {task}: {result.describe()}', flush=True)
        module, feed = target.module, {'images': x.numpy()}

        def run_torch(module=module) -> None:
            with torch.no_grad():
                module(x)

        fns[f'{name} pytorch'] = run_torch
        fns[f'{name} onnxruntime'] = lambda sess=sess, feed=feed: sess.run(None, feed)
        rows.append(dict(task=task, size=list(size), model=name, check=result.describe(),
                         max_abs_diff=result.max_abs_diff))
    times, errors = time_interleaved(fns, settings)
    for row in rows:
        for runtime in ('pytorch', 'onnxruntime'):
            key = f"{row['model']} {runtime}"
            row[f'{runtime}_ms'] = 1e3 * median(times[key]) if key in times else None
            if key in errors:
                row[f'{runtime}_error'] = errors[key]
    return rows


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f'{a / b:.2f}' if a and b else 'n/a'


def print_table(rows: List[Dict]) -> None:
    print('| task | input | model | PyTorch eager (ms) | ONNX Runtime (ms) | ORT speed-up | '
          'PyTorch / Swin-T | ORT / Swin-T |')
    print('|---|---|---|---|---|---|---|---|')
    for row in rows:
        ref = next((r for r in rows if r['task'] == row['task'] and r['model'] == REFERENCE),
                   None)
        torch_ms, ort_ms = row['pytorch_ms'], row['onnxruntime_ms']
        print(f"| {row['task']} | {row['size'][0]}x{row['size'][1]} | {row['model']} | "
              f"{torch_ms:.1f} | {ort_ms:.1f} | {_ratio(torch_ms, ort_ms)}x | "
              f"{_ratio(torch_ms, ref and ref['pytorch_ms'])} | "
              f"{_ratio(ort_ms, ref and ref['onnxruntime_ms'])} |")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    settings = Settings(device='cpu', threads=args.threads, amp=False, amp_dtype=None,
                        channels_last=False, compile=False, warmup=args.warmup,
                        repeat=args.repeat, iters=1)
    sizes = {'classifier': (args.cls_size, args.cls_size), 'segmentor': tuple(args.seg_size)}
    rows = []
    for task in args.tasks:
        rows += run_task(task, sizes[task], args.models, args, settings)
    print_table(rows)
    if args.json:
        import onnxruntime
        env = describe_environment(settings)
        env['packages']['onnxruntime'] = onnxruntime.__version__
        with open(args.json, 'w') as f:
            json.dump(dict(environment=env, results=rows), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
