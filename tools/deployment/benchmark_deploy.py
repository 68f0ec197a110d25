#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Latency of models deployed with mmdeploy: ONNX Runtime against PyTorch eager, beside Swin-T.

Mask R-CNN DualFormer-T and -S and mmdet's Mask R-CNN Swin-T at 800x1333 (``detector``), UperNet
DualFormer-S and mmseg's UperNet Swin-T at 512x512 (``segmentor``): each exported through
mmdeploy's ``torch2onnx`` with the deploy configs of ``configs/deploy`` (random weights), its
ONNX Runtime outputs checked against the eager model's on scikit-image's ``coffee`` photo
preprocessed as mmdeploy does, then, on that tensor, batch 1, the ONNX Runtime session and the
toolbox model's ``predict`` and mmdeploy's deployed model (the session and its
post-processing) timed in interleaved rounds with each thread count (medians). Printed: ms per
image, the speed-ups over eager, every time over Swin-T's in the same runtime
(:mod:`dualformer_mm.benchmark.deployed`). A benchmark to read, not a test.

Example:
    python tools/deployment/benchmark_deploy.py --threads 1 2 --repeat 5 --warmup 1 \\
        --json work_dirs/benchmark_deploy.json
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

from dualformer_mm.benchmark.deployed import (REFERENCE, ROOT, RUNTIMES, TASKS, describe_check,
                                              format_table, prepare, time_deployed)
from dualformer_mm.benchmark.options import Settings, positive_int
from dualformer_mm.benchmark.output import describe_environment, write_json

MODELS = sorted({name for task in TASKS.values() for name in task.models})


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS),
                        help='tasks (default: all)')
    parser.add_argument('--models', nargs='+', default=MODELS, choices=MODELS,
                        help='models, each in the tasks that have it (default: all)')
    parser.add_argument('--threads', nargs='+', type=positive_int(1), default=[1, 2],
                        help='thread counts of PyTorch and of ONNX Runtime, each timed in its '
                        'own rounds (default: 1 2)')
    parser.add_argument('--warmup', type=positive_int(0), default=1,
                        help='untimed calls per model and runtime (default: 1)')
    parser.add_argument('--repeat', type=positive_int(1), default=5,
                        help='timed rounds (default: 5)')
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'benchmark_deploy'),
                        help='where the checkpoints and ONNX files go')
    parser.add_argument('--reuse', action='store_true',
                        help='take the checkpoints and ONNX files of an earlier run from '
                        '--work-dir instead of exporting (the check still runs)')
    parser.add_argument('--json', help='write the rows and the environment here')
    args = parser.parse_args(argv)
    if osp.exists(args.work_dir) and not osp.isdir(args.work_dir):
        parser.error(f'argument --work-dir: must be a directory (or not exist yet), '
                     f'{args.work_dir!r} is a file')
    if REFERENCE not in args.models:
        parser.error(f'argument --models: must include {REFERENCE!r}, which every ratio '
                     f'divides by; got {args.models}')
    for task in args.tasks:
        if not (set(args.models) - {REFERENCE}) & set(TASKS[task].models):
            parser.error(f'argument --models: no model of task {task!r} besides {REFERENCE!r} '
                         f'(it has {sorted(TASKS[task].models)}); got {args.models}')
    args.threads = list(dict.fromkeys(args.threads))
    return args


def _loadavg() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    load_start = _loadavg()
    print(f'load average at start: {load_start}', flush=True)
    rows = []
    for task in args.tasks:
        deployed = []
        for model in TASKS[task].models:
            if model not in args.models:
                continue
            d = prepare(task, model, args.work_dir, reuse=args.reuse)
            print(f'{model} {task} ({d.size[0]}x{d.size[1]}), onnxruntime against eager: '
                  f'{describe_check(d.check)}', flush=True)
            deployed.append(d)
        task_rows = time_deployed(deployed, args.threads, args.warmup, args.repeat)
        for row in task_rows:
            for runtime in RUNTIMES:
                if f'{runtime}_error' in row:
                    print(f"{row['model']} {runtime}, {row['threads']} threads: "
                          f"{row[f'{runtime}_error']}")
        rows += sorted(task_rows, key=lambda r: (r['threads'], r['model'] == REFERENCE))
    load_end = _loadavg()
    print(format_table(rows))
    print(f'load average at end: {load_end}')
    if args.json:
        import mmdeploy
        import onnx
        import onnxruntime
        settings = Settings(device='cpu', threads=args.threads[0], amp=False, amp_dtype=None,
                            channels_last=False, compile=False, warmup=args.warmup,
                            repeat=args.repeat, iters=1)
        env = describe_environment(settings)
        env['threads'] = args.threads
        env['packages'].update(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__,
                               mmdeploy=mmdeploy.__version__)
        env['load_average'] = dict(start=load_start, end=load_end)
        env['command'] = ' '.join(['python', 'tools/deployment/benchmark_deploy.py',
                                   *(argv if argv is not None else sys.argv[1:])])
        write_json(args.json, dict(benchmark='deploy', environment=env, results=rows))
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
