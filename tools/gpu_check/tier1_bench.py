# Copyright (c) dualformer-mm contributors.
"""Tier 1 of the GPU check: the benchmarks of the kernels and of the backbones.

``bench_ops``: ``tools/benchmarks/bench_ops.py``, the kernels against the reference and the
softmax pool's bandwidth against a copy. ``throughput``: ``tools/benchmarks/throughput.py``
under AMP at 224x224 with the kernels (``DUALFORMER_OPS=ext``), DualFormer against Swin-T and
ConvNeXt-T. Both judge the report's thresholds (below) on a GPU only.
"""
import json
import os.path as osp
import subprocess
from typing import Any, Dict, List

from .common import ROOT, Context, child_env, result, run_logged, tail

BENCHMARKS = osp.join(ROOT, 'tools', 'benchmarks')
PIPELINE_MIN_SPEEDUP = 3.0
BANDWIDTH_MIN_FRACTION = 0.6
XS_MIN_RATIO = 1.7
THROUGHPUT_MODELS = ('dualformer-xs', 'dualformer-s', 'swin-t', 'convnext-t')
THROUGHPUT_DRY_MODELS = ('dualformer-xs', 'swin-t')


def step_bench_ops(ctx: Context) -> Dict[str, Any]:
    """``bench_ops.py`` with the bandwidth rows; the dry run shrinks its shapes."""
    log = osp.join(ctx.log_dir(), 'bench_ops.log')
    if ctx.dry_run:
        cmd = [ctx.python, '-m', 'gpu_check.bench_ops_dry', '--device', 'cpu', '--repeat', '1',
               '--threads', '1', '--bandwidth', '--json']
    else:
        cmd = [ctx.python, osp.join(BENCHMARKS, 'bench_ops.py'), '--device', 'cuda',
               '--repeat', '20', '--json']
    json_log = osp.join(ctx.log_dir(), 'bench_ops.json')
    with open(json_log, 'w') as out, open(log, 'w') as err:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=err, timeout=600, text=True,
                              env=child_env())
    if proc.returncode != 0:
        return result('fail', details=f'bench_ops.py failed (rc {proc.returncode}):\n'
                      f'{tail(log)}')
    text = tail(json_log, 10 ** 7)
    rows = json.loads(text[text.index('['):])
    figures = summarize_bench(rows)
    met = None if ctx.dry_run else bench_targets_met(figures)
    return result('pass', figures, target_met=met)


def summarize_bench(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Speedups of every op and shape, and the bandwidth fractions, from bench_ops' JSON."""
    speedups = {f'{r["op"]} @ {r["shape"]}': round(r['speedup'], 3) for r in rows
                if 'speedup' in r}
    bandwidth = {r['shape']: dict(fraction=round(r['fraction'], 3), op_gbps=round(r['op_gbps'], 1),
                                  copy_gbps=round(r['copy_gbps'], 1), op_bytes=r['op_bytes'])
                 for r in rows if r['op'] == 'partition_softmax_pool:bandwidth'}
    pipeline = [v for k, v in speedups.items() if k.startswith('pipeline @')]
    largest = max(bandwidth.items(), key=lambda kv: kv[1]['op_bytes'])[0] if bandwidth else None
    return dict(speedups=speedups, bandwidth=bandwidth,
                pipeline_min_speedup=min(pipeline) if pipeline else None,
                bandwidth_shape=largest,
                bandwidth_fraction=bandwidth[largest]['fraction'] if largest else None)


def bench_targets_met(figures: Dict[str, Any]) -> bool:
    """Pipeline at least 3x at every shape; the softmax pool at least 60% of the copy's
    bandwidth at the largest shape (the smaller ones are bound by launch latency, as is the
    copy of so few bytes)."""
    return (figures['pipeline_min_speedup'] is not None
            and figures['pipeline_min_speedup'] >= PIPELINE_MIN_SPEEDUP
            and figures['bandwidth_fraction'] is not None
            and figures['bandwidth_fraction'] >= BANDWIDTH_MIN_FRACTION)


def throughput_command(ctx: Context, json_path: str) -> List[str]:
    """``throughput.py`` under AMP at 224 on the GPU (64 px on the CPU for the dry run)."""
    script = osp.join(BENCHMARKS, 'throughput.py')
    if ctx.dry_run:
        # The two models of the target, at the smallest size: the step's logic, not speed.
        models = THROUGHPUT_DRY_MODELS
        sizes = ['--device', 'cpu', '--size', '64', '--batch', '2', '--warmup', '0',
                 '--repeat', '1', '--threads', '1']
    else:
        models = THROUGHPUT_MODELS
        sizes = ['--device', 'cuda', '--size', '224', '--batch', '128', '--warmup', '3',
                 '--repeat', '5', '--iters', '5']
    return [ctx.python, script, '--amp', '--models', *models, *sizes, '--json', json_path]


def step_throughput(ctx: Context) -> Dict[str, Any]:
    """Backbone images/s under AMP with the kernels, DualFormer against Swin-T and ConvNeXt-T."""
    log = osp.join(ctx.log_dir(), 'throughput.log')
    json_path = osp.join(ctx.log_dir(), 'throughput.json')
    # The targets are about the kernels, which `auto` does not run on CUDA until verified.
    proc = run_logged(throughput_command(ctx, json_path), log, timeout=600,
                      env=child_env(DUALFORMER_OPS='ext'))
    if proc.returncode != 0 or not osp.exists(json_path):
        return result('fail', details=f'throughput.py failed (rc {proc.returncode}):\n'
                      f'{tail(log)}')
    with open(json_path) as f:
        data = json.load(f)
    rows = {r['model']: r for r in data['rows']}
    figures: Dict[str, Any] = {
        name: (dict(img_per_s=round(r['img_per_s'], 1), ratio_to_swin_t=None
                    if r['ratio_to_swin_t'] is None else round(r['ratio_to_swin_t'], 3))
               if not r['error'] else dict(error=r['error']))
        for name, r in rows.items()}
    failed = [n for n, r in rows.items() if r['error']]
    ratio = rows.get('dualformer-xs', {}).get('ratio_to_swin_t')
    figures['xs_over_swin_t'] = None if ratio is None else round(ratio, 3)
    figures['dualformer_ops'] = data['environment'].get('dualformer_ops')
    met = None if ctx.dry_run or ratio is None else ratio >= XS_MIN_RATIO
    return result('fail' if failed else 'pass', figures,
                  f'failed models: {failed}' if failed else '', target_met=met)
