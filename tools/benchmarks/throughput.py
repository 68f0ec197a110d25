#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Inference throughput (images/s) of DualFormer and its peers, as in the paper's Table 6.

Section 4.4 of "DualFormer: Dual Path Transformer with Partition Attention" compares speed in
its Table 6: DualFormer-XS runs at 1253 images/s against 640 for MPViT-XS, at 224x224 on a
V100. This script measures the same quantity for the backbones of this project and the peers
the toolboxes provide, on whatever machine it runs on: every model gets the same batch
(``--batch``, default 32) of ``--size`` x ``--size`` images (default 224), in fp32 eager mode
under ``torch.inference_mode()`` unless ``--amp``/``--channels-last``/``--compile`` say
otherwise. After ``--warmup`` forwards per model, ``--repeat`` rounds (default 5) run every
model once in turn, and the median round gives images/s. Models are backbones only (four
stage outputs with their norms, no head; see ``dualformer_mm/benchmark/zoo.py``): close to a
classifier's speed but not the same, comparable between models here, not with the paper's
V100 figures.
Swin-T and ConvNeXt-T come from mmpretrain, or from timm where mmpretrain does not import
(``--peer-source``); the script prints which. Training speed is ``train_step.py``'s.

The script prints the ratio of every model's images/s to Swin-T's in the same run.

Example:
    python tools/benchmarks/throughput.py                       # all models, 224, batch 32
    python tools/benchmarks/throughput.py --models dualformer-xs dualformer-s swin-t \\
        --threads 8 --json work_dirs/throughput.json --png work_dirs/throughput.png
    python tools/benchmarks/throughput.py --device cuda --amp --batch 64 --iters 10
"""
import argparse
import math
from typing import Any, Dict, List, Optional, Sequence

from dualformer_mm.benchmark import options, output, ratios
from dualformer_mm.benchmark.errors import run_main
from dualformer_mm.benchmark.measure import median, time_interleaved
from dualformer_mm.benchmark.options import Settings
from dualformer_mm.benchmark.zoo import MODEL_ZOO, REFERENCE_MODEL

DEFAULT_MODELS = list(MODEL_ZOO)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of the script; returns the namespace with ``settings`` added."""
    parser = argparse.ArgumentParser(
        description='Images/s of DualFormer and peer backbones at one batch and size '
        '(paper Table 6).')
    options.add_model_arg(parser, DEFAULT_MODELS)
    parser.add_argument('--batch', type=options.positive_int(1), default=32,
                        help='images per forward (default: %(default)s)')
    parser.add_argument('--size', type=options.positive_int(32), default=224,
                        help='square input side in pixels (default: %(default)s)')
    options.add_common_args(parser, warmup=2, repeat=5)
    args = parser.parse_args(argv)
    args.settings = options.settings_from_args(parser, args)
    return args


def measure(names: Sequence[str], batch: int, size: int, settings: Settings
            ) -> List[Dict[str, Any]]:
    """Throughput of every model at one batch and size.

    Args:
        names (Sequence[str]): Keys of :data:`MODEL_ZOO`.
        batch (int): Images per forward.
        size (int): Square input side.
        settings (Settings): Run options.

    Returns:
        List[Dict[str, Any]]: One row per model: ``model``, ``implementation`` (package and
        version), ``params_m``, ``batch``, ``size``, ``ms_per_batch`` (median),
        ``img_per_s``, ``ratio_to_swin_t`` (None without Swin-T), ``times_s`` (every
        sample) and ``error`` (None unless it failed).
    """
    models, params, sources = options.build_all(names, settings, image_size=(size, size))
    x = options.make_input(batch, size, size, settings)
    fns = {name: options.forward_fn(model, x, settings) for name, model in models.items()}
    times, errors = time_interleaved(fns, settings)
    rows = []
    for name in models:
        seconds = median(times[name]) if name in times else math.nan
        rows.append(dict(model=name, implementation=sources[name].describe(),
                         params_m=params[name] / 1e6, batch=batch, size=size,
                         ms_per_batch=seconds * 1e3, img_per_s=batch / seconds,
                         times_s=times.get(name, []), error=errors.get(name)))
    ratios.add_ratio(rows, 'img_per_s', 'ratio_to_swin_t')
    return rows


def print_table(rows: List[Dict[str, Any]], header: str) -> None:
    """Print the results as an aligned table."""
    print(header)
    print(f'{"model":<15}{"params (M)":>11}{"ms/batch":>11}{"img/s":>10}'
          f'{"x " + REFERENCE_MODEL:>10}')
    for r in rows:
        if r['error']:
            print(f'{r["model"]:<15}{r["params_m"]:>11.1f}  failed: {r["error"]}')
            continue
        ratio = f'{r["ratio_to_swin_t"]:.2f}x' if r['ratio_to_swin_t'] is not None else '-'
        print(f'{r["model"]:<15}{r["params_m"]:>11.1f}{r["ms_per_batch"]:>11.1f}'
              f'{r["img_per_s"]:>10.1f}{ratio:>10}')


def plot(rows: List[Dict[str, Any]], path: str, title: str) -> None:
    """Bar chart of images/s per model, labelled with the ratio to Swin-T."""
    plt = output.pyplot()
    rows = [r for r in rows if not r['error']]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    names = [r['model'] for r in rows][::-1]
    values = [r['img_per_s'] for r in rows][::-1]
    ax.barh(names, values, color=[output.model_colour(n) for n in names])
    for i, r in enumerate(rows[::-1]):
        label = f' {r["img_per_s"]:.1f}'
        if r['ratio_to_swin_t'] is not None:
            label += f' ({r["ratio_to_swin_t"]:.2f}x)'
        ax.text(r['img_per_s'], i, label, va='center', fontsize=8)
    ax.set_xlabel('images / s (higher is better)')
    ax.set_xlim(0, max(values) * 1.3 if values else 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure, print, and write the requested outputs; returns the exit status."""
    args = parse_args(argv)
    settings = args.settings
    names = list(dict.fromkeys(args.models))
    header = (f'throughput at {args.size}x{args.size}, batch {args.batch}, median of '
              f'{settings.repeat} interleaved rounds; {output.describe_settings(settings)}')
    print(f'building {", ".join(names)} ...', flush=True)
    rows = measure(names, args.batch, args.size, settings)
    print_table(rows, header)
    output.write_outputs(
        args, dict(benchmark='throughput', batch=args.batch, size=args.size, rows=rows,
                   environment=output.describe_environment(settings)),
        lambda path: plot(rows, path, f'Backbone throughput, {args.size}x{args.size} batch '
                          f'{args.batch}\n{output.describe_settings(settings)}'))
    return 1 if all(r['error'] for r in rows) else 0


if __name__ == '__main__':
    run_main(main)
