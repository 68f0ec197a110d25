# Copyright (c) dualformer-mm contributors.
"""Tier 2 of the GPU check: the real configs through the real tools, on a few generated images.

``train_cls``, ``train_det``, ``train_seg``: one ``tools/train.py`` iteration (``--amp`` on a
GPU) of the config of :func:`gpu_check.tier2_config.tier2_config`, then the predict step of
:mod:`gpu_check.predict_hook`; with 2+ GPUs through ``tools/dist_train.sh`` with the configs'
SyncBN, on one GPU in this process with BN. ``dist_train_det``: ``tools/dist_train.sh`` on the
detection demo config, 2 GPUs.
"""
import glob
import importlib.util
import json
import math
import os.path as osp
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .common import (TOOLS, Context, child_env, free_port, load_mmcv_wheels, result, run_logged,
                     tail)
from .tier2_config import TASKS, dist_demo_config, tier2_config


def mmcv_ops_flavour() -> Optional[str]:
    """``'cuda'``, ``'cpu'``, ``'lite'`` (no compiled ops) or None (no mmcv), without importing
    mmcv: read from the libraries its compiled ext links against."""
    spec = importlib.util.find_spec('mmcv')
    if spec is None or not spec.submodule_search_locations:
        return None
    exts = [p for d in spec.submodule_search_locations for p in glob.glob(osp.join(d, '_ext*.so'))]
    if not exts:
        return 'lite'
    with open(exts[0], 'rb') as f:
        return 'cuda' if load_mmcv_wheels().library_has_cuda(f.read()) else 'cpu'


def needs_full_stack(ctx: Context) -> Optional[str]:
    """Why a tier-2 step cannot run here (a toolbox or mmcv's CUDA ops missing), or None."""
    missing = [n for n in ('mmpretrain', 'mmdet', 'mmseg') if importlib.util.find_spec(n) is None]
    if missing:
        return f'skipped: needs {", ".join(missing)} (tier 2)'
    flavour = mmcv_ops_flavour()
    if flavour == 'lite':
        return 'skipped: needs mmcv with compiled ops, not mmcv-lite (tier 2)'
    if not ctx.dry_run and flavour != 'cuda':
        return 'skipped: needs mmcv with CUDA ops (installed: CPU-only ops) (tier 2)'
    return None


def needs_two_gpus(ctx: Context) -> Optional[str]:
    """Why the two-GPU step cannot run here, or None."""
    if ctx.dry_run:
        return 'skipped: needs 2+ CUDA GPUs'
    if ctx.num_gpus < 2:
        return f'skipped: needs 2+ CUDA GPUs ({ctx.num_gpus} visible)'
    return needs_full_stack(ctx)


def run_train_py(config: str, options: List[str]) -> int:
    """``tools/train.py CONFIG OPTIONS`` run in this process; its exit status."""
    spec = importlib.util.spec_from_file_location('gpu_check_train', osp.join(TOOLS, 'train.py'))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    argv = sys.argv
    sys.argv = ['train.py', config, *options]
    try:
        train.main()
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except Exception:  # noqa: BLE001 (reported with its traceback)
        traceback.print_exc()
        return 1
    finally:
        sys.argv = argv
    return 0


def step_train_task(task: str) -> Callable[[Context], Dict[str, Any]]:
    """The tier-2 step of one task: generate data, one (AMP) iteration, one predict step."""

    def run(ctx: Context) -> Dict[str, Any]:
        from dualformer_mm.utils.runner import replace_norm_type

        import tests.test_tools as data_tools
        # Data and work dir in a temporary folder; the training log is copied to logs/.
        work = tempfile.mkdtemp(prefix=f'gpu_check_{task}_')
        data = getattr(data_tools, TASKS[task][1])(
            Path(work) / 'data', num=2, **({} if task != 'det' else {'size': 96}))
        predict_out = osp.join(work, 'predict.json')
        sync_bn = ctx.num_gpus >= 2 and not ctx.dry_run
        cfg = tier2_config(task, str(data), ctx.dry_run, predict_out)
        converted = 0
        if not sync_bn:
            # One process: plain BN where the configs have SyncBN (which needs a process
            # group to synchronise over).
            model_cfg = cfg.model.to_dict()
            converted = replace_norm_type(model_cfg, 'SyncBN', 'BN')
            cfg.model = model_cfg
        final = osp.join(work, f'{task}_config.py')
        cfg.dump(final)
        amp = [] if ctx.dry_run else ['--amp']
        work_dir = osp.join(work, 'work')
        start = time.time()
        if sync_bn:
            # SyncBN across 2 GPUs: the real launcher, 2 processes.
            proc = run_logged(['bash', osp.join(TOOLS, 'dist_train.sh'), final, '2', *amp,
                               '--work-dir', work_dir],
                              osp.join(ctx.log_dir(), f'train_{task}.log'), timeout=900,
                              env=child_env(PYTHON=ctx.python, PORT=str(free_port())))
            rc = proc.returncode
        else:
            # One process: tools/train.py's main() here, which saves a second interpreter's
            # imports; this process is the step's own, so a crash still stays in the step.
            rc = run_train_py(final, amp + ['--work-dir', work_dir])
        figures: Dict[str, Any] = dict(config=TASKS[task][0], amp=bool(amp),
                                       processes=2 if sync_bn else 1,
                                       norm='SyncBN' if sync_bn else f'BN ({converted} SyncBN '
                                       'replaced)', seconds=round(time.time() - start, 1))
        logs = sorted(glob.glob(osp.join(work_dir, '*', '*.log')))
        text = tail(logs[-1], 10 ** 6) if logs else ''
        if logs:
            shutil.copy(logs[-1], osp.join(ctx.log_dir(), f'train_{task}.mmengine.log'))
        losses = re.findall(r'\bloss: ([-\d.e+naninf]+)', text)
        figures['loss'] = losses[-1] if losses else None
        if rc != 0:
            return result('fail', figures, f'training failed (rc {rc}):\n{text[-3000:]}')
        if not losses or not math.isfinite(float(losses[-1])):
            return result('fail', figures, f'no finite loss in the log:\n{text[-3000:]}')
        if not osp.exists(predict_out):
            return result('fail', figures, f'no predict summary written:\n{text[-3000:]}')
        with open(predict_out) as f:
            figures['predict'] = json.load(f)
        if not figures['predict']['samples']:
            return result('fail', figures, 'the predict step returned no sample')
        return result('pass', figures)

    return run


def step_dist_train_det(ctx: Context) -> Dict[str, Any]:
    """``tools/dist_train.sh`` on the detection demo config, 2 GPUs, four iterations."""
    import numpy as np

    from dualformer_mm.demo.synthetic import make_detection
    work = tempfile.mkdtemp(prefix='gpu_check_dist_')
    data = osp.join(work, 'coco')
    # 32 training images at 4 per GPU on 2 GPUs: 4 iterations, then the demo's validation.
    make_detection(data, np.random.RandomState(0), dict(train=32, val=4))
    config = osp.join(work, 'det_demo.py')
    dist_demo_config(data).dump(config)
    log = osp.join(ctx.log_dir(), 'dist_train_det.log')
    start = time.time()
    proc = run_logged(['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2', '--work-dir',
                       osp.join(work, 'work')], log, timeout=900,
                      env=child_env(PYTHON=ctx.python, PORT=str(free_port())))
    text = tail(log, 10 ** 6)
    figures = dict(seconds=round(time.time() - start, 1),
                   iterations=len(re.findall(r'Epoch\(train\)\s+\[1\]\[\s*\d+/4\]', text)),
                   cpu_fallback='CUDA is not available' in text)
    ok = proc.returncode == 0 and 'Epoch(train) [1][4/4]' in text and \
        not figures['cpu_fallback'] and 'coco/bbox_mAP' in text
    return result('pass' if ok else 'fail', figures, '' if ok else tail(log))

