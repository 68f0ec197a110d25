#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Backbone latency and peak memory against input resolution (paper section 3.2).

Section 3.2 of "DualFormer: Dual Path Transformer with Partition Attention" argues that
Multi-Head Partition-wise Attention (MHPA) costs time linear in the number of tokens: tokens
attend within a fixed number of partitions and to partition descriptors, instead of to all
tokens. This script measures how that shows at the sizes of the paper's dense tasks: the
forward of each backbone (batch ``--batch``, default 1, under ``torch.inference_mode()``) at
every ``--sizes`` entry (default 224x224, 512x512, 800x1280 as in COCO, 1024x2048 as in
Cityscapes), against Swin-T (windowed attention, also linear) and PVTv2-B2 (spatial-reduction
attention, quadratic in tokens with a reduced key set).

For every model and size it reports the median latency over ``--repeat`` interleaved rounds
(all models run in turn each round, see ``dualformer_mm/benchmark/measure.py``), the peak
memory of one forward beyond weights and input (see
``dualformer_mm.benchmark.measure.peak_memory_mib`` for exactly what is counted), the latency
ratio to Swin-T at that size, and the growth from the smallest size: the time ratio divided
by the pixel ratio (1.0 for linear cost, above 1 for faster-than-linear growth) and the
exponent ``log(time ratio) / log(pixel ratio)`` (1 linear, 2 quadratic).
Fixed costs weigh on small inputs, so the exponent is mostly below 1 at first and is most
telling between the large sizes.

Swin-T is built with ``pad_small_map=True`` (as mmdet's configs do), without which
mmpretrain's Swin only takes inputs whose feature maps tile into its 7x7 windows. mmdet's
PVTv2 and DualFormer take any size. Where mmpretrain does not import, Swin-T and ConvNeXt-T
come from timm (``--peer-source``, printed), whose Swin pads to its windows.

The script prints every forward time over Swin-T's at the same size in the same run.

Example:
    python tools/benchmarks/resolution_scaling.py               # defaults, minutes on CPU
    python tools/benchmarks/resolution_scaling.py --sizes 224x224 512x512 --repeat 3 \\
        --json work_dirs/scaling.json --png work_dirs/scaling.png
    python tools/benchmarks/resolution_scaling.py --device cuda --models dualformer-t \\
        dualformer-s swin-t convnext-t pvtv2-b1 pvtv2-b2
"""
import argparse
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dualformer_mm.benchmark import options, output, ratios
from dualformer_mm.benchmark.errors import run_main
from dualformer_mm.benchmark.measure import median, peak_memory_all, time_interleaved
from dualformer_mm.benchmark.options import Settings, parse_size
from dualformer_mm.benchmark.zoo import REFERENCE_MODEL

DEFAULT_MODELS = ['dualformer-s', 'swin-t', 'pvtv2-b2']
DEFAULT_SIZES = ['224x224', '512x512', '800x1280', '1024x2048']


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of the script; returns the namespace with ``settings`` added."""
    parser = argparse.ArgumentParser(
        description='Latency and peak memory of backbones against input size (paper '
        'section 3.2).')
    options.add_model_arg(parser, DEFAULT_MODELS)
    parser.add_argument('--sizes', nargs='+', type=parse_size, metavar='HxW',
                        default=[parse_size(s) for s in DEFAULT_SIZES],
                        help=f'input sizes, HEIGHTxWIDTH (default: {" ".join(DEFAULT_SIZES)})')
    parser.add_argument('--batch', type=options.positive_int(1), default=1,
                        help='images per forward (default: %(default)s)')
    options.add_common_args(parser, warmup=1, repeat=5)
    args = parser.parse_args(argv)
    args.settings = options.settings_from_args(parser, args)
    # Smallest first: growth is reported from the first size.
    args.sizes = sorted(dict.fromkeys(args.sizes), key=lambda hw: (hw[0] * hw[1], hw))
    return args


def _growth(value: float, base: float, pixel_ratio: float) -> Tuple[Optional[float],
                                                                   Optional[float]]:
    """(value ratio / pixel ratio, log-log exponent) from the base size, None if undefined."""
    if not (math.isfinite(value) and math.isfinite(base)) or base <= 0 or value <= 0:
        return None, None
    ratio = value / base
    exponent = math.log(ratio) / math.log(pixel_ratio) if pixel_ratio != 1 else None
    return ratio / pixel_ratio, exponent


def measure(names: Sequence[str], sizes: Sequence[Tuple[int, int]], batch: int,
            settings: Settings) -> List[Dict[str, Any]]:
    """Latency and memory of every model at every size.

    Args:
        names (Sequence[str]): Keys of :data:`dualformer_mm.benchmark.zoo.MODEL_ZOO`.
        sizes (Sequence[Tuple[int, int]]): (height, width), smallest first.
        batch (int): Images per forward.
        settings (Settings): Run options.

    Returns:
        List[Dict[str, Any]]: One row per model and size, by model then size: ``model``,
        ``implementation`` (package and version), ``params_m``, ``height``, ``width``,
        ``pixels``, ``batch``, ``ms`` (median), ``peak_mib``, ``ms_ratio_to_swin_t``,
        ``time_ratio_over_pixel_ratio``, ``time_exponent``, ``memory_ratio_over_pixel_ratio``,
        ``memory_exponent``, ``times_s`` and ``error`` (None unless the forward failed,
        e.g. out of memory).
    """
    models, params, sources = options.build_all(names, settings)
    results: Dict[Tuple[str, Tuple[int, int]], Dict[str, Any]] = {}
    for height, width in sizes:
        print(f'  {height}x{width} ...', flush=True)
        x = options.make_input(batch, height, width, settings)
        fns = {name: options.forward_fn(model, x, settings) for name, model in models.items()}
        times, errors = time_interleaved(fns, settings)
        peaks = peak_memory_all(fns, settings, errors)
        for name in models:
            ms = median(times[name]) * 1e3 if name in times else math.nan
            results[name, (height, width)] = dict(
                model=name, implementation=sources[name].describe(),
                params_m=params[name] / 1e6, height=height, width=width,
                pixels=height * width, batch=batch, ms=ms, peak_mib=peaks[name],
                times_s=times.get(name, []), error=errors.get(name))
        del x, fns
    rows = []
    for name in models:
        base = results[name, sizes[0]]
        for size in sizes:
            row = results[name, size]
            reference = results.get((REFERENCE_MODEL, size))
            row['ms_ratio_to_swin_t'] = (
                row['ms'] / reference['ms'] if reference and not reference['error']
                and not row['error'] else None)
            pixel_ratio = row['pixels'] / base['pixels']
            row['time_ratio_over_pixel_ratio'], row['time_exponent'] = _growth(
                row['ms'], base['ms'], pixel_ratio)
            row['memory_ratio_over_pixel_ratio'], row['memory_exponent'] = _growth(
                row['peak_mib'], base['peak_mib'], pixel_ratio)
            rows.append(row)
    return rows


def _fmt(value: Optional[float], spec: str, suffix: str = '') -> str:
    """Format a number, or '-' when it is missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '-'
    return f'{value:{spec}}{suffix}'


def print_table(rows: List[Dict[str, Any]], header: str) -> None:
    """Print the results as an aligned table, one block per model."""
    print(header)
    print(f'{"model":<14}{"size":>11}{"Mpixels":>9}{"ms":>10}{"peak MiB":>10}'
          f'{"x " + REFERENCE_MODEL:>9}{"t/px":>7}{"exp":>6}')
    previous = None
    for r in rows:
        if previous is not None and r['model'] != previous:
            print()
        previous = r['model']
        size = f'{r["height"]}x{r["width"]}'
        if r['error']:
            print(f'{r["model"]:<14}{size:>11}{r["pixels"] / 1e6:>9.3f}  failed: {r["error"]}')
            continue
        print(f'{r["model"]:<14}{size:>11}{r["pixels"] / 1e6:>9.3f}{r["ms"]:>10.1f}'
              f'{_fmt(r["peak_mib"], ".1f"):>10}{_fmt(r["ms_ratio_to_swin_t"], ".2f", "x"):>9}'
              f'{_fmt(r["time_ratio_over_pixel_ratio"], ".2f"):>7}'
              f'{_fmt(r["time_exponent"], ".2f"):>6}')
    print('t/px: time ratio over pixel ratio from the smallest size (1 = linear); '
          'exp: log-log slope of time against pixels')


def plot(rows: List[Dict[str, Any]], path: str, title: str) -> None:
    """Log-log plot of latency (left) and peak memory (right) against pixels, per model."""
    plt = output.pyplot()
    from matplotlib.ticker import NullLocator
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    names = list(dict.fromkeys(r['model'] for r in rows))
    panels = (('ms', 'latency (ms)'), ('peak_mib', 'peak memory of the forward (MiB)'))
    ticks = sorted({(r['pixels'], f'{r["height"]}x{r["width"]}') for r in rows})
    for ax, (key, label) in zip(axes, panels):
        anchor = None
        for name in names:
            points = [(r['pixels'], r[key]) for r in rows if r['model'] == name
                      and not r['error'] and r[key] is not None and math.isfinite(r[key])
                      and r[key] > 0]
            if not points:
                continue
            anchor = anchor or points[0]
            ax.plot(*zip(*points), marker='o', label=name, color=output.model_colour(name))
        if anchor and len(ticks) > 1:
            # Where a model would be if its cost grew exactly with the pixel count.
            xs = [ticks[0][0], ticks[-1][0]]
            ax.plot(xs, [anchor[1] * x / anchor[0] for x in xs], ls='--', color='grey',
                    lw=1, label='linear in pixels')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xticks([t[0] for t in ticks])
        ax.set_xticklabels([t[1] for t in ticks], rotation=30, fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())  # only the measured sizes are labelled
        ax.set_xlabel('input size (log pixels)')
        ax.set_ylabel(label)
        ax.grid(True, which='major', alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure, print, and write the requested outputs; returns the exit status."""
    args = parse_args(argv)
    settings = args.settings
    names = list(dict.fromkeys(args.models))
    header = (f'backbone forward, batch {args.batch}, median of {settings.repeat} '
              f'interleaved rounds; {output.describe_settings(settings)}')
    print(f'building {", ".join(names)} ...', flush=True)
    rows = measure(names, args.sizes, args.batch, settings)
    print_table(rows, header)
    output.write_outputs(
        args, dict(benchmark='resolution_scaling', batch=args.batch,
                   sizes=[f'{h}x{w}' for h, w in args.sizes], rows=rows,
                   environment=output.describe_environment(settings)),
        lambda path: plot(rows, path, f'Backbone cost against input size, batch {args.batch}; '
                          f'{output.describe_settings(settings)}'))
    return 1 if all(r['error'] for r in rows) else 0


if __name__ == '__main__':
    run_main(main)
