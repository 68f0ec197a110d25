# Copyright (c) dualformer-mm contributors.
"""The report of the GPU check: ``report.json``, ``report.md``, and the verdict on the kernels.

The targets are judged on a GPU only. The report ends with :func:`kernels_verdict`'s line:
whether the CUDA kernels matched the reference on this machine (``build_ext``,
``cuda_tests`` and ``train_step`` all passed), and so whether to set ``DUALFORMER_OPS=ext``
here (``auto`` runs the reference ops on CUDA until the kernels are verified,
``dualformer_mm.ops._backend.CUDA_KERNELS_VERIFIED``).
"""
import json
import os.path as osp
from typing import Any, Dict, List, Sequence

from .tier1_bench import BANDWIDTH_MIN_FRACTION, PIPELINE_MIN_SPEEDUP, XS_MIN_RATIO

TARGETS = {
    'cuda_tests': 'every CUDA test passes',
    'bench_ops': 'fused pipeline >= 3x the reference; softmax pool >= 60% of copy bandwidth',
    'throughput': 'DualFormer-XS >= 1.7x the images/s of Swin-T under AMP at 224x224',
}
# The steps that compare the CUDA kernels with the reference on this GPU.
KERNEL_STEPS = ('build_ext', 'cuda_tests', 'train_step')


def target_lines(steps: Dict[str, Dict[str, Any]], dry_run: bool) -> List[Dict[str, Any]]:
    """The four targets with what this run measured."""
    def fig(name: str, *keys: str) -> Any:
        value: Any = steps.get(name, {}).get('figures', {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    tests = steps.get('cuda_tests', {})
    rows = [
        dict(target='every CUDA test passes',
             measured=None if dry_run else f'{fig("cuda_tests", "passed")} passed, '
             f'{fig("cuda_tests", "failures")} failed, {fig("cuda_tests", "errors")} errors, '
             f'{fig("cuda_tests", "skipped")} skipped',
             met=tests.get('target_met')),
        dict(target=f'fused partition pipeline >= {PIPELINE_MIN_SPEEDUP:g}x the reference',
             measured=fig('bench_ops', 'pipeline_min_speedup'),
             met=None if dry_run or fig('bench_ops', 'pipeline_min_speedup') is None else
             fig('bench_ops', 'pipeline_min_speedup') >= PIPELINE_MIN_SPEEDUP),
        dict(target=f'softmax pool >= {100 * BANDWIDTH_MIN_FRACTION:.0f}% of copy bandwidth '
             f'(at {fig("bench_ops", "bandwidth_shape")})',
             measured=fig('bench_ops', 'bandwidth_fraction'),
             met=None if dry_run or fig('bench_ops', 'bandwidth_fraction') is None else
             fig('bench_ops', 'bandwidth_fraction') >= BANDWIDTH_MIN_FRACTION),
        dict(target=f'DualFormer-XS >= {XS_MIN_RATIO:g}x Swin-T images/s under AMP at 224',
             measured=fig('throughput', 'xs_over_swin_t'),
             met=None if dry_run else steps.get('throughput', {}).get('target_met')),
    ]
    return rows


def kernels_verdict(steps: Dict[str, Dict[str, Any]], gpus: Sequence[str],
                    dry_run: bool) -> Dict[str, Any]:
    """Whether this user should run the CUDA kernels on this machine, in one line.

    Args:
        steps (Dict[str, Dict]): Results by step name (``status`` and ``figures``).
        gpus (Sequence[str]): The visible GPUs, as the environment step names them.
        dry_run (bool): A CPU run, which compares nothing on a GPU.

    Returns:
        Dict[str, Any]: ``opt_in`` (True: the kernels matched; False: they did not, or were
        not fully compared; None in a dry run) and ``line``, the report's last line.

    Example:
        >>> passed = {n: dict(status='pass') for n in KERNEL_STEPS}
        >>> kernels_verdict(passed, ['H200 (sm_90)'], dry_run=False)['line']
        'CUDA kernels match the reference on H200 (sm_90): set DUALFORMER_OPS=ext to use them.'
    """
    if dry_run:
        return dict(opt_in=None, line='CUDA kernels not compared with the reference (dry run on '
                    'the CPU): run `make gpu-check` on a GPU machine to know whether to set '
                    'DUALFORMER_OPS=ext there.')
    gpu = ', '.join(gpus) or 'this machine'
    figures = steps.get('train_step', {}).get('figures', {})
    # After the one-line change that makes `auto` run the kernels, the advice turns around.
    default_runs_kernels = bool(figures.get('cuda_kernels_verified'))
    status = {name: steps.get(name, {}).get('status', 'not run') for name in KERNEL_STEPS}
    failed = [name for name, s in status.items() if s == 'fail']
    if failed:
        advice = ('set DUALFORMER_OPS=reference' if default_runs_kernels else
                  'do NOT set DUALFORMER_OPS=ext (the default, auto, runs the PyTorch reference '
                  'ops on CUDA)')
        return dict(opt_in=False, line=f'CUDA kernels do NOT match the reference on {gpu} '
                    f'({", ".join(failed)} failed): {advice}.')
    missing = [f'{name}: {s}' for name, s in status.items() if s != 'pass']
    if missing:
        advice = ('the default (auto) runs them as verified elsewhere; set '
                  'DUALFORMER_OPS=reference to be safe' if default_runs_kernels else
                  'do NOT set DUALFORMER_OPS=ext')
        return dict(opt_in=False, line=f'CUDA kernels not compared with the reference on {gpu} '
                    f'({"; ".join(missing)}): {advice} until {", ".join(KERNEL_STEPS)} pass '
                    'here.')
    advice = ('the default (DUALFORMER_OPS=auto) runs them' if default_runs_kernels else
              'set DUALFORMER_OPS=ext to use them')
    return dict(opt_in=True, line=f'CUDA kernels match the reference on {gpu}: {advice}.')


def _fmt_figures(figures: Dict[str, Any], limit: int = 400) -> str:
    text = json.dumps(figures, default=str)
    return text if len(text) <= limit else text[:limit] + ' ...'


def write_report(out: str, report: Dict[str, Any]) -> None:
    """``report.json`` (everything) and ``report.md`` (a table for people, ending with the
    verdict on the kernels)."""
    with open(osp.join(out, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1, default=str)
    lines = [f'# GPU check ({report["mode"]})', '',
             f'{report["started"]}, {report["seconds"]:.0f} s; '
             f'GPUs: {", ".join(report["gpus"]) or "none"}; python {report["python"]}', '',
             '| step | tier | status | time (s) | figures |', '|---|---|---|---|---|']
    for s in report['steps']:
        lines.append(f'| {s["name"]} | {s["tier"]} | {s["status"]} | {s.get("seconds", 0):.1f} '
                     f'| {_fmt_figures(s["figures"]).replace("|", "/")} |')
    lines += ['', '## Targets (judged on a GPU only)', '', '| target | measured | met |',
              '|---|---|---|']
    for t in report['targets']:
        met = {True: 'yes', False: '**no**', None: 'not judged'}[t['met']]
        lines.append(f'| {t["target"]} | {t["measured"]} | {met} |')
    failed = [s for s in report['steps'] if s['status'] == 'fail']
    if failed:
        lines += ['', '## Failures', '']
        for s in failed:
            lines += [f'### {s["name"]}', '', '```', s['details'][-3000:], '```', '']
    lines += ['', '## CUDA kernels on this machine', '', report['kernels']['line']]
    with open(osp.join(out, 'report.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')

