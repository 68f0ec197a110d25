# Copyright (c) dualformer-mm contributors.
"""The steps of the GPU check in order, and the runner: each step in a fresh interpreter."""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

from .common import NEEDS_CUDA, ROOT, Context, Step, child_env, result, tail
from .report import TARGETS, kernels_verdict, target_lines, write_report
from .tier1 import step_build_ext, step_cuda_tests, step_environment
from .tier1_bench import step_bench_ops, step_throughput
from .tier1_kernels import step_train_step
from .tier2 import needs_full_stack, needs_two_gpus, step_dist_train_det, step_train_task

DEFAULT_OUT = osp.join('work_dirs', 'gpu_check')


def needs_cuda(ctx: Context) -> Optional[str]:
    """The dry run skips the steps that only make sense on a GPU."""
    return NEEDS_CUDA if ctx.dry_run else None


STEPS: List[Step] = [
    Step('environment', 1, 'versions, GPUs, compiled flavours', step_environment, 120),
    Step('build_ext', 1, 'dualformer_mm._ext built for the visible GPU', step_build_ext, 450,
         needs_cuda),
    Step('cuda_tests', 1, 'pytest -m cuda', step_cuda_tests, 650),
    Step('train_step', 1, 'DualFormer-S step, kernels vs reference, BN/GN x fp32/fp16/bf16',
         step_train_step, 300),
    Step('bench_ops', 1, 'bench_ops.py: kernels vs reference, softmax-pool bandwidth',
         step_bench_ops, 650),
    Step('throughput', 1, 'throughput.py --amp at 224: DualFormer vs Swin-T, ConvNeXt-T',
         step_throughput, 650),
    Step('train_cls', 2, 'dualformer_s_in1k: one --amp iteration and a predict step',
         step_train_task('cls'), 950, needs_full_stack),
    Step('train_det', 2, 'mask_rcnn_dualformer_s_1x: one --amp iteration and a predict step',
         step_train_task('det'), 950, needs_full_stack),
    Step('train_seg', 2, 'upernet_dualformer_s_ade20k: one --amp iteration and a predict step',
         step_train_task('seg'), 950, needs_full_stack),
    Step('dist_train_det', 2, 'tools/dist_train.sh on the detection demo config, 2 GPUs',
         step_dist_train_det, 950, needs_two_gpus),
]
STEP_NAMES = [s.name for s in STEPS]


def run_step_in_child(step: Step, ctx: Context, argv_extra: List[str]) -> Dict[str, Any]:
    """Run ``step`` in a fresh interpreter; its result, or a failure with the log's tail."""
    log = osp.join(ctx.log_dir(), f'{step.name}.child.log')
    result_path = osp.join(ctx.log_dir(), f'{step.name}.result.json')
    if osp.exists(result_path):
        os.remove(result_path)
    cmd = [ctx.python, '-m', 'gpu_check', '--run-step', step.name, '--result', result_path,
           '--out', ctx.out, *argv_extra]
    start = time.time()
    try:
        with open(log, 'w') as f:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=step.timeout, text=True, env=child_env())
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    seconds = time.time() - start
    if osp.exists(result_path):
        with open(result_path) as f:
            res = json.load(f)
    elif rc is None:
        res = result('fail', details=f'timed out after {step.timeout} s:\n{tail(log)}')
    else:
        res = result('fail', details=f'the step process ended with rc {rc}:\n{tail(log)}')
    res['seconds'] = round(seconds, 1)
    return res


def child_main(name: str, result_path: str, ctx: Context) -> int:
    """Body of the child process of one step: run it, write its result JSON."""
    step = STEPS[STEP_NAMES.index(name)]
    try:
        res = step.run(ctx)
    except Exception as err:  # noqa: BLE001 (reported as the step's failure)
        res = result('fail', details=f'{type(err).__name__}: {err}\n'
                     f'{traceback.format_exc()[-3000:]}')
    with open(result_path, 'w') as f:
        json.dump(res, f, indent=1, default=str)
    return 0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of ``tools/gpu_check.sh``."""
    parser = argparse.ArgumentParser(
        prog='tools/gpu_check.sh',
        description='Everything GPU-specific, checked in one command (make gpu-check).')
    parser.add_argument('--dry-run', action='store_true',
                        help='run every step that can on the CPU at tiny sizes (CI)')
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='folder of report.json, report.md and logs/ (default: %(default)s)')
    parser.add_argument('--steps', nargs='+', choices=STEP_NAMES, default=None,
                        help='run only these steps (the others are reported as not selected)')
    parser.add_argument('--tier', type=int, choices=(1, 2), default=2,
                        help='the highest tier to run (default: %(default)s, all steps)')
    parser.add_argument('--run-step', choices=STEP_NAMES, help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the steps and write the report; returns the exit status (0, 1 failed, 2 no GPU)."""
    args = parse_args(argv)
    try:
        import torch
    except ImportError as err:
        print(f'gpu_check: torch cannot be imported ({err})', file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus and not args.dry_run:
        print('gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); '
              '--dry-run checks the script on the CPU', file=sys.stderr)
        return 2
    out = osp.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    ctx = Context(dry_run=args.dry_run, out=out, device='cpu' if args.dry_run else 'cuda',
                  num_gpus=0 if args.dry_run else gpus)
    if args.run_step:
        return child_main(args.run_step, args.result, ctx)

    extra = ['--dry-run'] if args.dry_run else []
    started = datetime.datetime.now().isoformat(timespec='seconds')
    start = time.time()
    results: Dict[str, Dict[str, Any]] = {}
    for step in STEPS:
        if args.steps is not None and step.name not in args.steps:
            res = result('skipped: not selected (--steps)')
        elif step.tier > args.tier:
            res = result(f'skipped: not selected (--tier {args.tier})')
        else:
            reason = step.needs(ctx)
            if reason:
                res = result(reason)
            else:
                print(f'[gpu_check] {step.name}: {step.title} ...', flush=True)
                res = run_step_in_child(step, ctx, extra)
        res.setdefault('seconds', 0.0)
        results[step.name] = res
        print(f'[gpu_check] {step.name}: {res["status"]} ({res["seconds"]:.1f} s)', flush=True)
    gpu_names = results['environment'].get('figures', {}).get('gpus', [])
    report = dict(
        mode='dry run on CPU, tiny sizes' if args.dry_run else 'GPU',
        started=started, seconds=time.time() - start, python=platform.python_version(),
        gpus=gpu_names,
        steps=[dict(name=s.name, tier=s.tier, title=s.title, target=TARGETS.get(s.name),
                    **results[s.name]) for s in STEPS],
        targets=target_lines(results, args.dry_run),
        kernels=kernels_verdict(results, gpu_names, args.dry_run))
    write_report(out, report)
    failed = [n for n, r in results.items() if r['status'] == 'fail']
    print(f'[gpu_check] report: {osp.join(out, "report.md")}; '
          + (f'FAILED: {", ".join(failed)}' if failed else 'no step failed'), flush=True)
    print(f'[gpu_check] {report["kernels"]["line"]}', flush=True)
    return 1 if failed else 0
