# Copyright (c) dualformer-mm contributors.
"""The ablation's table: one row per variant from the finished runs, as Markdown and JSON."""
import datetime
import os
import platform
import statistics
from typing import Any, Dict, List, Optional, Sequence

import torch

from ...utils.environment import cpu_model, package_versions
from .variants import Variant, describe

REFERENCE = 'full'  # step times are also given relative to the full model, measured alongside
PACKAGES = ('dualformer_mm', 'mmengine', 'mmcv', 'mmpretrain')


def environment() -> Dict[str, Any]:
    """Date, machine and versions a result was measured with."""
    versions = {'python': platform.python_version(), 'torch': torch.__version__,
                **package_versions(PACKAGES)}
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                cpu=cpu_model(), cpu_count=os.cpu_count(), threads=torch.get_num_threads(),
                versions=versions)


def _std(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation; None for a single run."""
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(variants: Dict[str, Variant], runs: Dict[str, List[Dict[str, Any]]]
              ) -> List[Dict[str, Any]]:
    """One row per variant with at least one finished run.

    Args:
        variants: The variants, in table order.
        runs: Each variant's finished runs (the per-run records of the work dir).

    Returns:
        list[dict]: ``name``, ``options``, ``paper``, ``paper_top1``, ``seeds``, ``top1``
        (per seed), ``top1_mean``, ``top1_std`` (None for one seed), ``params``, ``flops``,
        ``ms_per_step`` (median over seeds), ``time_vs_full`` (None without the full model).
    """
    rows = []
    for name, variant in variants.items():
        done = sorted(runs.get(name, []), key=lambda r: r['seed'])
        if not done:
            continue
        top1 = [r['top1'] for r in done]
        rows.append(dict(
            name=name, options=variant.options, paper=variant.paper,
            paper_top1=variant.paper_top1, seeds=[r['seed'] for r in done], top1=top1,
            top1_mean=statistics.fmean(top1), top1_std=_std(top1),
            params=done[0]['params'], flops=done[0]['flops'],
            ms_per_step=statistics.median(r['ms_per_step'] for r in done),
            time_vs_full=None))
    reference = next((r for r in rows if r['name'] == REFERENCE), None)
    for row in rows:
        if reference is not None:
            row['time_vs_full'] = row['ms_per_step'] / reference['ms_per_step']
    return rows


def _fmt(value: Optional[float], spec: str) -> str:
    return '-' if value is None else format(value, spec)


def markdown(rows: List[Dict[str, Any]], img_size: int) -> str:
    """The rows as a Markdown table."""
    lines = [f'| variant | backbone options | top-1 (%) mean | std | per seed | params (M) | '
             f'MFLOPs at {img_size} | ms/step | time vs full | paper |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        seeds = ' / '.join(f'{v:.1f}' for v in r['top1'])
        lines.append(
            f"| {r['name']} | {describe(r['options'])} | {r['top1_mean']:.2f} | "
            f"{_fmt(r['top1_std'], '.2f')} | {seeds} | {r['params'] / 1e6:.2f} | "
            f"{r['flops'] / 1e6:.0f} | {r['ms_per_step']:.0f} | "
            f"{_fmt(r['time_vs_full'], '.2f')} | {r['paper']} |")
    return '\n'.join(lines)
