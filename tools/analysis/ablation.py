#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""The paper's ablations (Tables 5 and 6), trained side by side on an image folder.

Trains each named variant of a DualFormer classifier with one shared budget (steps, batch,
image size, AdamW, warm-up and cosine, seeds) on mmpretrain ``CustomDataset`` folders
(``DATA_ROOT/train/<class>/*`` and ``DATA_ROOT/val/<class>/*``), and prints and writes
(``WORK_DIR/ablation.md``, ``WORK_DIR/ablation.json``) one row per variant: top-1 mean and
standard deviation over the seeds, parameters, FLOPs and time per step, with the row of the
paper's Table 5 or 6 the variant corresponds to. Each finished run (variant, seed) is kept in
``WORK_DIR/runs/<variant>/seed<seed>.json``; a rerun skips those, so a killed experiment
continues where it stopped. The variants are the table in
``dualformer_mm/analysis/ablation/variants.py``; the classifier is that of
``configs/mmpretrain/dualformer_t_in1k.py`` beside this script.

Examples:
    python tools/analysis/ablation.py data/demo/cls --sets table5 table6 readings
    python tools/analysis/ablation.py data/demo/cls --variants full \\
        serial-kmeans:mode=serial,partition=kmeans --seeds 0 --steps 30
    python tools/analysis/ablation.py --list    # the built-in variants and sets
"""
import argparse
import json
import os
import os.path as osp
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from mmengine.logging import MMLogger

from dualformer_mm.analysis.ablation.report import environment, markdown, summarize
from dualformer_mm.analysis.ablation.runner import (CLASSIFIER_CONFIG, Budget, build_dataset,
                                                    complexity, train_one)
from dualformer_mm.analysis.ablation.variants import (SETS, VARIANTS, VariantError, describe,
                                                      nest, select)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    b = Budget()
    parser = argparse.ArgumentParser(
        description='Train DualFormer variants (the paper\'s Tables 5 and 6) with one budget.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('data_root', nargs='?',
                        help='folder with TRAIN_PREFIX/<class>/ and VAL_PREFIX/<class>/ images')
    parser.add_argument('--sets', nargs='+', default=[], metavar='SET',
                        help=f'built-in variant sets: {", ".join(SETS)}')
    parser.add_argument('--variants', nargs='+', default=[], metavar='SPEC',
                        help='built-in variant names, or name:key=value,key=value with '
                        'DualFormer options (block_cfg.mode=serial, or mode=serial)')
    parser.add_argument('--list', action='store_true', help='print the built-in variants')
    parser.add_argument('--arch', default=b.arch, help='DualFormer size: t, xs, s or b')
    parser.add_argument('--steps', type=int, default=b.steps)
    parser.add_argument('--batch-size', type=int, default=b.batch_size)
    parser.add_argument('--img-size', type=int, default=b.img_size,
                        help='side of the square training and test crops')
    parser.add_argument('--lr', type=float, default=b.lr, help='peak AdamW learning rate')
    parser.add_argument('--weight-decay', type=float, default=b.weight_decay)
    parser.add_argument('--warmup-steps', type=int, default=b.warmup_steps)
    parser.add_argument('--min-crop', type=float, default=b.min_crop,
                        help='smallest area fraction of the random resized crop')
    parser.add_argument('--drop-path-rate', type=float, default=b.drop_path_rate)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--train-prefix', default='train')
    parser.add_argument('--val-prefix', default='val')
    parser.add_argument('--work-dir', default='work_dirs/ablation')
    parser.add_argument('--threads', type=int,
                        help="torch CPU threads (default: torch's); on a machine shared with "
                        'other work, 1 thread avoids threads waiting for each other')
    parser.add_argument('--log-interval', type=int, default=25, help='steps between lines')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.list:
        return args
    if args.data_root is None:
        parser.error('give DATA_ROOT (or --list)')
    try:
        args.variant_table = select(args.sets, args.variants)
        args.budget = Budget(args.arch, args.steps, args.batch_size, args.img_size, args.lr,
                             args.weight_decay, args.warmup_steps, args.min_crop,
                             args.drop_path_rate)
        args.budget.validate()
    except ValueError as e:
        parser.error(str(e))
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds has repeats: {args.seeds}')
    return args


def _jsonable(value: Any) -> Any:
    """What a value reads back as from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _write_json(path: str, data: Any) -> None:
    """Write through a temporary file, so a killed run never leaves half a record."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def run_path(work_dir: str, name: str, seed: int) -> str:
    return osp.join(work_dir, 'runs', name, f'seed{seed}.json')


def load_finished(path: str, setting: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The record at ``path`` if it exists; an error if it was made with another setting."""
    if not osp.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    differ = sorted(k for k in setting if record.get(k) != setting[k])
    if differ:
        raise VariantError(
            f'{path} was trained with other settings ({", ".join(differ)}: '
            f'{[record.get(k) for k in differ]} there, {[setting[k] for k in differ]} now); '
            f'use another --work-dir or delete it')
    return record


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    if args.list:
        for name, v in VARIANTS.items():
            print(f'{name:14s} {describe(v.options):45s} {v.paper}')
        for name, members in SETS.items():
            print(f'set {name}: {" ".join(members)}')
        return []
    import torch
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Train the runs not yet in the work dir, then write and print the table."""
    # mmengine logs every parameter's init and optimizer group at INFO: keep the terminal to
    # the progress lines.
    MMLogger.get_instance('dualformer-ablation', log_level='WARNING')
    budget, variants = args.budget, args.variant_table
    train_set = build_dataset(args.data_root, args.train_prefix, budget, train=True)
    val_set = build_dataset(args.data_root, args.val_prefix, budget, train=False)
    classes = list(train_set.metainfo['classes'])
    if list(val_set.metainfo['classes']) != classes:
        raise SystemExit(f'the class folders differ: {classes} in {args.train_prefix}, '
                         f'{list(val_set.metainfo["classes"])} in {args.val_prefix}')
    data = dict(root=osp.abspath(args.data_root), classes=classes, train_images=len(train_set),
                val_images=len(val_set))

    todo, runs, costs = [], {name: [] for name in variants}, {}
    try:
        for seed in args.seeds:  # seed-major: a stopped run has whole seeds of every variant
            for name, variant in variants.items():
                setting = _jsonable(dict(variant=name, options=variant.options, seed=seed,
                                         budget=budget.as_dict(), data=data))
                record = load_finished(run_path(args.work_dir, name, seed), setting)
                if record is not None:
                    runs[name].append(record)
                else:
                    todo.append((name, variant, seed, setting))
        for name, variant, _, _ in todo:
            if name not in costs:  # builds each pending variant once: a bad value fails now
                try:
                    costs[name] = complexity(budget, nest(variant.options), len(classes),
                                             osp.join(ROOT, CLASSIFIER_CONFIG))
                except (ValueError, TypeError, KeyError) as e:
                    raise VariantError(f'variant {name!r} ({describe(variant.options)}): the '
                                       f'backbone rejected its options: {e}') from e
    except VariantError as e:
        raise SystemExit(f'[ablation] {e}')
    skipped = sum(len(r) for r in runs.values())
    print(f'[ablation] {len(variants)} variants x {len(args.seeds)} seeds on {data["root"]} '
          f'({len(classes)} classes, {len(train_set)}/{len(val_set)} images); {skipped} runs '
          f'already in {args.work_dir}, {len(todo)} to train', flush=True)

    start, steps_done = time.perf_counter(), 0
    for i, (name, variant, seed, setting) in enumerate(todo, 1):
        print(f'[ablation] run {i}/{len(todo)}: {name} ({describe(variant.options)}), seed '
              f'{seed}', flush=True)

        def progress(step: int, loss: float, seconds: float) -> None:
            if step % args.log_interval and step != budget.steps:
                return
            elapsed = time.perf_counter() - start
            per_step = elapsed / (steps_done + step)
            left = per_step * ((len(todo) - i + 1) * budget.steps - step)
            print(f'[ablation]   step {step}/{budget.steps} loss {loss:.3f} '
                  f'{1e3 * seconds:.0f} ms/step, about {left / 60:.0f} min left', flush=True)

        result = train_one(budget, nest(variant.options), seed, train_set, val_set, progress,
                           osp.join(ROOT, CLASSIFIER_CONFIG))
        steps_done += budget.steps
        params, flops = costs[name]
        record = dict(setting, **result, params=params, flops=flops, **environment())
        _write_json(run_path(args.work_dir, name, seed), record)
        runs[name].append(record)
        print(f'[ablation] {name} seed {seed}: top-1 {result["top1"]:.2f}% in '
              f'{result["train_seconds"]:.0f} s', flush=True)

    rows = summarize(variants, runs)
    table = markdown(rows, budget.img_size)
    command = shlex.join(['python', 'tools/analysis/ablation.py', *args.argv])
    meta = dict(command=command, budget=budget.as_dict(), seeds=args.seeds, data=data,
                **environment())
    _write_json(osp.join(args.work_dir, 'ablation.json'), dict(meta=meta, rows=rows))
    versions = ', '.join(f'{k} {v}' for k, v in meta['versions'].items())
    with open(osp.join(args.work_dir, 'ablation.md'), 'w') as f:
        f.write(f'{table}\n\nCommand: `{command}`  \nMachine: {meta["cpu"]} '
                f'({meta["cpu_count"]} cores), {meta["threads"]} torch threads; {versions}; '
                f'{meta["date"]}\n')
    print(table)
    print(f'[ablation] wrote {osp.join(args.work_dir, "ablation.md")} and ablation.json')
    return rows


if __name__ == '__main__':
    main()
