# Copyright (c) dualformer-mm contributors.
"""The printed tables and the chart of ``train_step.py`` (backbone steps and Mask R-CNN
iterations against Swin-T)."""
import math
from typing import Any, Dict, List, Optional

from . import output
from .zoo import REFERENCE_MODEL


def _fmt(value: Optional[float], spec: str, suffix: str = '') -> str:
    """Format a number, or '-' when it is missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '-'
    return f'{value:{spec}}{suffix}'


def _warnings(rows: List[Dict[str, Any]]) -> None:
    """Print what makes a row less trustworthy than it looks."""
    for r in rows:
        if r['error']:
            continue
        if r['loss'] is not None and not math.isfinite(r['loss']):
            print(f'warning: {r["model"]}: the last step\'s loss is {r["loss"]}')
        if r['skipped_steps']:
            print(f'warning: {r["model"]}: the GradScaler skipped {r["skipped_steps"]} '
                  'optimizer steps for fp16 gradient overflow after settling its scale; '
                  'those steps were cheaper than the others')


def print_backbone_table(rows: List[Dict[str, Any]], header: str) -> None:
    """Print the backbone part as an aligned table."""
    ref = f'x {REFERENCE_MODEL}'
    print(header)
    print(f'{"model":<15}{"params (M)":>11}{"ms/step":>10}{"img/s":>9}{ref:>10}'
          f'{"state MiB":>11}{"step MiB":>10}{"peak MiB":>10}{ref:>10}')
    for r in rows:
        if r['error']:
            print(f'{r["model"]:<15}{r["params_m"]:>11.1f}  failed: {r["error"]}')
            continue
        print(f'{r["model"]:<15}{r["params_m"]:>11.1f}{r["ms_per_step"]:>10.1f}'
              f'{r["img_per_s"]:>9.1f}{_fmt(r["ratio_to_swin_t"], ".2f", "x"):>10}'
              f'{r["state_mib"]:>11.1f}{_fmt(r["step_peak_mib"], ".1f"):>10}'
              f'{_fmt(r["peak_mib"], ".1f"):>10}'
              f'{_fmt(r["memory_ratio_to_swin_t"], ".2f", "x"):>10}')
    print('state: weights, buffers, AdamW moments and batch; step: the most one step '
          'allocates on top; peak = state + step')
    _warnings(rows)


def print_detector_table(rows: List[Dict[str, Any]], header: str) -> None:
    """Print the detector part as an aligned table."""
    ref = f'x {REFERENCE_MODEL}'
    print(header)
    print(f'{"model":<15}{"params (M)":>11}{"s/iter":>9}{"img/s":>9}{ref:>10}'
          f'{"backbone s":>12}{"share":>7}{"peak MiB":>10}{ref:>10}')
    for r in rows:
        if r['error']:
            print(f'{r["model"]:<15}{r["params_m"]:>11.1f}  failed: {r["error"]}')
            continue
        backbone_s = r['backbone_ms'] / 1e3 if r['backbone_ms'] is not None else None
        print(f'{r["model"]:<15}{r["params_m"]:>11.1f}{r["ms_per_iter"] / 1e3:>9.2f}'
              f'{r["img_per_s"]:>9.2f}{_fmt(r["ratio_to_swin_t"], ".2f", "x"):>10}'
              f'{_fmt(backbone_s, ".2f"):>12}{_fmt(r["backbone_share"], ".0%"):>7}'
              f'{_fmt(r["peak_mib"], ".0f"):>10}'
              f'{_fmt(r["memory_ratio_to_swin_t"], ".2f", "x"):>10}')
        if r['backbone_error']:
            print(f'  {r["model"]} backbone alone failed: {r["backbone_error"]}')
    print('backbone s: forward + backward of the backbone alone on the same batch; share: '
          'its part of the iteration; peak: weights, buffers and AdamW moments + the most '
          'one iteration allocates on top')
    _warnings(rows)


def plot(backbone_rows: Optional[List[Dict[str, Any]]],
         detector_rows: Optional[List[Dict[str, Any]]], path: str, title: str) -> None:
    """Bar charts: training images/s per backbone; Mask R-CNN s/iter with the backbone's part."""
    plt = output.pyplot()
    panels = [p for p in (('backbone', backbone_rows), ('detector', detector_rows)) if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for ax, (part, rows) in zip(axes[0], panels):
        rows = [r for r in rows if not r['error']][::-1]
        names = [r['model'] for r in rows]
        colours = [output.model_colour(n) for n in names]
        if part == 'backbone':
            values = [r['img_per_s'] for r in rows]
            ax.barh(names, values, color=colours)
            ax.set_xlabel('training images / s (higher is better)')
            ax.set_title('backbone + linear head', fontsize=9)
        else:
            from matplotlib.patches import Patch
            values = [r['ms_per_iter'] / 1e3 for r in rows]
            ax.barh(names, values, color=colours, alpha=0.45)
            ax.barh(names, [(r['backbone_ms'] or 0) / 1e3 for r in rows], color=colours)
            ax.set_xlabel('s / iteration (lower is better)')
            ax.set_title('Mask R-CNN', fontsize=9)
            ax.legend(handles=[Patch(color='grey', alpha=0.45, label='whole iteration'),
                               Patch(color='grey', label='backbone forward + backward')],
                      fontsize=8, loc='lower right')
        for i, (r, v) in enumerate(zip(rows, values)):
            label = f' {v:.2f}'
            if r['ratio_to_swin_t'] is not None:
                label += f' ({r["ratio_to_swin_t"]:.2f}x img/s)'
            ax.text(v, i, label, va='center', fontsize=8)
        ax.set_xlim(0, max(values) * 1.45 if values else 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
