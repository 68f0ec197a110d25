#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Everything GPU-specific, checked in one command: ``tools/gpu_check.sh`` (``make gpu-check``).

Writes ``work_dirs/gpu_check/report.json`` and ``report.md`` (``--out`` elsewhere). Each step
runs in its own process (a CUDA error that poisons one process cannot stop the others), records
pass/fail/skipped, its time and its figures; the exit status is 1 when a step failed.

Tier 1 needs only torch, mmengine, mmcv-lite and this package, so it runs next to any torch:

* ``environment``: versions, GPUs, what mmcv and ``dualformer_mm._ext`` were compiled with.
* ``build_ext``: ``setup.py build_ext --inplace`` for the visible GPU only (the rule of
  ``dualformer_mm/_cuda_arch.py`` with ``TORCH_CUDA_ARCH_LIST`` unset), CUDA required.
* ``cuda_tests``: ``pytest -m cuda`` over the test files that have CUDA cases.
* ``train_step``: one forward+backward of DualFormer-S with BN and with GN, in fp32 and under
  fp16 and bf16 autocast, with the fused ops and with the reference ops from the same weights
  and input: finite losses, gradients equal within a tolerance per precision.
* ``bench_ops``: ``tools/benchmarks/bench_ops.py --device cuda``: fused against reference, and
  the softmax pool's bandwidth as a fraction of a device-to-device copy.
* ``throughput``: ``tools/benchmarks/throughput.py --device cuda --amp`` at 224x224,
  DualFormer-XS and -S against Swin-T and ConvNeXt-T.

Tier 2 adds, when mmpretrain, mmdet, mmseg and an mmcv with CUDA ops are installed:

* ``train_cls``, ``train_det``, ``train_seg``: one ``tools/train.py --amp`` iteration of
  ``dualformer_s_in1k``, ``mask_rcnn_dualformer_s_1x`` and ``upernet_dualformer_s_ade20k`` on
  a few generated images, then one predict step of the trained model (SyncBN as the configs
  have it with 2+ GPUs, through ``tools/dist_train.sh``; BN on one GPU).
* ``dist_train_det``: with 2+ GPUs, ``tools/dist_train.sh`` on the detection demo config for
  four iterations.

Without a GPU the script exits 2 with a one-line reason. ``--dry-run`` runs every step it can
on the CPU at tiny sizes, skipping those that need CUDA, which is how CI tests the script.

Targets printed in the report (judged on a GPU only): every CUDA test passes; the fused
partition pipeline at least 3x the reference; the softmax pool at least 60% of the copy's
bandwidth; DualFormer-XS at least 1.7x the images/s of Swin-T under AMP at 224x224.

Example:
    bash tools/gpu_check.sh                      # on a GPU machine
    bash tools/gpu_check.sh --dry-run            # anywhere, tiny sizes, CPU
    python tools/gpu_check.py --steps train_step bench_ops --out /tmp/gpu_check
    bash tools/gpu_check.sh --tier 1             # tier 1 only
"""
import argparse
import datetime
import glob
import importlib.util
import json
import math
import os
import os.path as osp
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_OUT = osp.join('work_dirs', 'gpu_check')
NEEDS_CUDA = 'skipped: needs CUDA'

# Gradient tolerance of the fused ops against the reference, per precision: the bound on
# grad_difference()'s max_rel.
GRAD_RTOL = {'fp32': 1e-3, 'fp16': 2e-2, 'bf16': 5e-2}
TARGETS = {
    'cuda_tests': 'every CUDA test passes',
    'bench_ops': 'fused pipeline >= 3x the reference; softmax pool >= 60% of copy bandwidth',
    'throughput': 'DualFormer-XS >= 1.7x the images/s of Swin-T under AMP at 224x224',
}
PIPELINE_MIN_SPEEDUP = 3.0
BANDWIDTH_MIN_FRACTION = 0.6
XS_MIN_RATIO = 1.7


@dataclass
class Context:
    """What every step knows about the run."""

    dry_run: bool
    out: str
    device: str  # 'cuda', or 'cpu' for --dry-run
    num_gpus: int
    python: str = sys.executable

    def log_dir(self) -> str:
        path = osp.join(self.out, 'logs')
        os.makedirs(path, exist_ok=True)
        return path


@dataclass
class Step:
    """One check: its function runs in a child process and returns a result dict."""

    name: str
    tier: int
    title: str
    run: Callable[[Context], Dict[str, Any]]
    timeout: int  # seconds, on a GPU; the dry run has its own small sizes
    needs: Callable[['Context', Dict[str, Any]], Optional[str]] = field(
        default=lambda ctx, env: None)  # returns a skip reason, or None to run


def result(status: str, figures: Optional[Dict[str, Any]] = None, details: str = '',
           target_met: Optional[bool] = None) -> Dict[str, Any]:
    """A step's outcome: ``status`` is ``'pass'``, ``'fail'`` or ``'skipped: <why>'``."""
    return dict(status=status, figures=figures or {}, details=details, target_met=target_met)


def _run(cmd: Sequence[str], log: str, timeout: int, env: Optional[Dict[str, str]] = None,
         ) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root, its output appended to ``log``."""
    with open(log, 'a') as f:
        f.write(f'$ {" ".join(cmd)}\n')
        f.flush()
        return subprocess.run(list(cmd), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env, text=True)


def _tail(path: str, chars: int = 3000) -> str:
    try:
        with open(path, errors='replace') as f:
            return f.read()[-chars:]
    except OSError:
        return ''


# ---------------------------------------------------------------------------------------------
# Tier 1


def step_environment(ctx: Context) -> Dict[str, Any]:
    """Versions, GPUs, and the flavours of mmcv and dualformer_mm._ext."""
    import torch
    cuda_arch = _load_cuda_arch()
    figures: Dict[str, Any] = dict(
        python=platform.python_version(), torch=torch.__version__,
        torch_cuda=torch.version.cuda, gpus=[], torch_arch_list=torch.cuda.get_arch_list())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            figures['gpus'].append(f'{torch.cuda.get_device_name(i)} (sm_{major}{minor})')
    nvcc = shutil.which('nvcc')
    if nvcc:
        out = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
        match = re.search(r'release ([\d.]+)', out)
        figures['nvcc'] = match.group(1) if match else out.strip()[-60:]
    else:
        figures['nvcc'] = None
    import importlib.metadata
    for name, dist in (('mmengine', 'mmengine'), ('mmcv', None), ('mmpretrain', 'mmpretrain'),
                       ('mmdet', 'mmdet'), ('mmseg', 'mmsegmentation'), ('timm', 'timm')):
        # Installed versions from the metadata: importing the toolboxes here costs seconds.
        dists = [dist] if dist else ['mmcv', 'mmcv-lite']
        found = [f'{d} {importlib.metadata.version(d)}' for d in dists
                 if _has_distribution(d)]
        figures[name] = ', '.join(found) or 'not installed'
    flavours = cuda_arch.installed_flavours()
    figures['mmcv_ops'] = {'lite': 'none (mmcv-lite)', None: 'CPU only'}.get(
        flavours.get('mmcv_cuda'), f'CUDA {flavours.get("mmcv_cuda")}')
    figures['dualformer_ext_cuda'] = flavours.get('ext_cuda')
    return result('pass', figures)


def _has_distribution(name: str) -> bool:
    import importlib.metadata
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _load_cuda_arch():
    """``tools/install/mmcv_wheels.py`` (the install's flavour reading) by its path: the
    environment step must report even where ``import dualformer_mm`` fails (no mmcv, a broken
    build)."""
    spec = importlib.util.spec_from_file_location(
        '_dualformer_mmcv_wheels', osp.join(ROOT, 'tools', 'install', 'mmcv_wheels.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_ext_command(ctx: Context) -> List[str]:
    """The compile of ``dualformer_mm._ext`` in place."""
    return [ctx.python, 'setup.py', 'build_ext', '--inplace']


def build_ext_env(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment of the build: CUDA required, architectures of the visible GPU only."""
    env = dict(os.environ if environ is None else environ)
    # The check builds for the GPU it runs on (the rule's second case), which also keeps the
    # build within the time budget; a user's TORCH_CUDA_ARCH_LIST would widen it.
    env.pop('TORCH_CUDA_ARCH_LIST', None)
    env['DUALFORMER_CUDA'] = '1'
    env.setdefault('MAX_JOBS', str(os.cpu_count() or 1))
    return env


def step_build_ext(ctx: Context) -> Dict[str, Any]:
    """Compile the CPU and CUDA kernels for the visible GPU, then import them."""
    log = osp.join(ctx.log_dir(), 'build_ext.log')
    start = time.time()
    proc = _run(build_ext_command(ctx), log, timeout=420, env=build_ext_env())
    seconds = time.time() - start
    archs = re.findall(r'TORCH_CUDA_ARCH_LIST=(\S+)', _tail(log, 200000))
    figures = dict(build_s=round(seconds, 1), archs=archs[-1] if archs else None)
    if proc.returncode != 0:
        return result('fail', figures, f'build failed (rc {proc.returncode}):\n{_tail(log)}')
    check = subprocess.run(
        [ctx.python, '-c', 'import dualformer_mm._ext as e; print(e.with_cuda())'], cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    figures['with_cuda'] = check.stdout.strip()
    if check.returncode != 0 or check.stdout.strip() != 'True':
        return result('fail', figures, 'the built extension has no CUDA kernels or does not '
                      f'import:\n{(check.stdout + check.stderr)[-2000:]}')
    return result('pass', figures)


def cuda_test_files(root: str = ROOT) -> List[str]:
    """Test files with CUDA cases: those using ``tests.utils``' CUDA params or the marker."""
    pattern = re.compile(r'^from tests\.utils import [^\n]*\b(CUDA|DEVICES)\b|pytest\.mark\.cuda\b',
                         re.M)
    files = []
    for name in sorted(os.listdir(osp.join(root, 'tests'))):
        if name.startswith('test_') and name.endswith('.py'):
            with open(osp.join(root, 'tests', name)) as f:
                if pattern.search(f.read()):
                    files.append(osp.join('tests', name))
    return files


def _junit_counts(path: str) -> Dict[str, int]:
    import xml.etree.ElementTree as ET
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == 'testsuite' else root.findall('testsuite')
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    return counts


def step_cuda_tests(ctx: Context) -> Dict[str, Any]:
    """``pytest -m cuda`` on the files with CUDA cases (collection only in the dry run)."""
    files = cuda_test_files()
    log = osp.join(ctx.log_dir(), 'cuda_tests.log')
    base = [ctx.python, '-m', 'pytest', '-m', 'cuda', '-p', 'no:cacheprovider', *files]
    if ctx.dry_run:
        proc = _run(base + ['--collect-only', '-q'], log, timeout=300)
        # The last line reads "N/M tests collected (K deselected)".
        match = re.search(r'(\d+)(?:/\d+)? tests? collected', _tail(log))
        figures = dict(files=files, collected=int(match.group(1)) if match else 0)
        if proc.returncode != 0 or not figures['collected']:
            return result('fail', figures, f'collection failed:\n{_tail(log)}')
        return result(NEEDS_CUDA, figures, 'collected only')
    xml = osp.join(ctx.log_dir(), 'cuda_tests.xml')
    proc = _run(base + ['-q', f'--junitxml={xml}'], log, timeout=600)
    counts = _junit_counts(xml) if osp.exists(xml) else {}
    figures = dict(files=files, **counts)
    ok = proc.returncode == 0 and counts.get('passed', 0) > 0
    return result('pass' if ok else 'fail', figures, '' if ok else _tail(log),
                  target_met=ok and counts.get('skipped', 0) == 0)


def grad_difference(ref: Dict[str, Any], ext: Dict[str, Any]) -> Dict[str, Any]:
    """How far the fused backend's gradients are from the reference's.

    ``max_rel`` is the largest, over parameters, of ``|g_ext - g_ref| / max(|g_ref|,
    1e-3 |G_ref|)`` (L2 norms; ``G_ref`` all reference gradients together): a parameter whose
    gradient is tiny next to the others (a bias a normalisation makes almost irrelevant) is
    judged against a thousandth of the whole, not against its own rounding noise.
    ``total_rel`` is ``|G_ext - G_ref| / |G_ref|``.
    """
    import torch
    total = math.sqrt(sum(g.double().pow(2).sum().item() for g in ref.values()))
    floor = max(1e-3 * total, 1e-30)
    worst, worst_name, diff_sq = 0.0, '', 0.0
    for name, g_ref in ref.items():
        diff = (ext[name].double() - g_ref.double()).norm().item()
        diff_sq += diff ** 2
        rel = diff / max(g_ref.double().norm().item(), floor)
        if not rel <= worst:  # NaN counts as the worst
            worst, worst_name = rel, name
    finite = all(torch.isfinite(g).all().item() for g in list(ref.values()) + list(ext.values()))
    return dict(max_rel=worst, max_rel_param=worst_name,
                total_rel=math.sqrt(diff_sq) / max(total, 1e-30), finite=finite)


def train_step_case(model: Any, x: Any, precision: str, device: str) -> Dict[str, Any]:
    """One forward+backward of ``model`` with each op backend; the gradients compared.

    The loss is a fixed random linear function of the four stage outputs (the outputs are
    normalised, so a loss like their mean square would be flat and its gradients noise).

    Args:
        model (nn.Module): DualFormer in training mode.
        x (Tensor): Input batch.
        precision (str): ``'fp32'``, ``'fp16'`` or ``'bf16'`` (autocast).
        device (str): ``'cuda'`` or ``'cpu'``.

    Returns:
        Dict[str, Any]: Both losses, ``ext_op_calls`` (dualformer kernels the fused run
        called, from the profiler: 0 would mean the comparison compared the reference with
        itself), ``missing_grads`` and the fields of :func:`grad_difference`.
    """
    import torch
    from dualformer_mm import ops
    dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(precision)
    # A fixed loss scale keeps fp16 gradients out of the subnormal range, as GradScaler does.
    scale = 1024.0 if precision == 'fp16' else 1.0
    weights: List[Any] = []
    losses, grads, calls = {}, {}, {}
    for backend in ('reference', 'ext'):
        model.zero_grad(set_to_none=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with ops.use_backend(backend), torch.autocast(
                    device, dtype=dtype or torch.float32, enabled=dtype is not None):
                outs = model(x)
            if not weights:
                gen = torch.Generator().manual_seed(2)
                weights = [torch.randn(o.shape, generator=gen).to(device) for o in outs]
            loss = sum((o.float() * w).mean() for o, w in zip(outs, weights))
            (loss * scale).backward()
        calls[backend] = sum(1 for e in prof.events() if e.name.startswith('dualformer::'))
        losses[backend] = loss.item()
        grads[backend] = {n: p.grad.detach().float() / scale for n, p in model.named_parameters()
                          if p.grad is not None}
    missing = sorted(set(n for n, p in model.named_parameters() if p.requires_grad)
                     - set(grads['ext']))
    return dict(loss_reference=losses['reference'], loss_ext=losses['ext'],
                ext_op_calls=calls['ext'], reference_op_calls=calls['reference'],
                missing_grads=missing[:5], **grad_difference(grads['reference'], grads['ext']))


DRY_ARCH = dict(depths=[1, 1, 1, 1], channels=[32, 64, 128, 160], num_heads=[1, 2, 4, 5],
                mlp_ratios=[2, 2, 2, 2])


def step_train_step(ctx: Context) -> Dict[str, Any]:
    """DualFormer-S training step, fused ops against reference, BN/GN x fp32/fp16/bf16."""
    from dualformer_mm import ops
    if not ops.extension_available(ctx.device):
        return result('fail', details=f'dualformer_mm._ext cannot run on {ctx.device}: '
                      f'{ops._backend._missing(ctx.device)}')
    import torch
    from dualformer_mm import DualFormer
    size, batch = (64, 2) if ctx.dry_run else (224, 8)
    # The dry run checks the step's logic on a one-block-per-stage DualFormer: S's 18 blocks
    # at fp16 on a CPU (emulated half) take minutes.
    arch: Any = DRY_ARCH if ctx.dry_run else 's'
    figures: Dict[str, Any] = dict(size=size, batch=batch, arch=arch, tolerance=GRAD_RTOL)
    problems = []
    for norm in ('BN', 'GN'):
        norm_cfg = dict(type='BN') if norm == 'BN' else dict(type='GN', num_groups=8)
        torch.manual_seed(0)
        model = DualFormer(arch=arch, drop_path_rate=0.0, norm_cfg=norm_cfg).to(ctx.device)
        model.train()
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        x = x.to(ctx.device)
        for precision in ('fp32', 'fp16', 'bf16'):
            key = f'{norm}_{precision}'
            try:
                case = train_step_case(model, x, precision, ctx.device)
            except Exception as err:  # noqa: BLE001 (one case failing must not hide the rest)
                figures[key] = dict(error=f'{type(err).__name__}: {err}'[:500])
                problems.append(f'{key}: {type(err).__name__}: {err}'[:500])
                continue
            figures[key] = {k: (float(f'{v:.4g}') if isinstance(v, float) else v)
                            for k, v in case.items()}
            losses_ok = all(math.isfinite(case[k]) for k in ('loss_reference', 'loss_ext'))
            if not (losses_ok and case['finite']):
                problems.append(f'{key}: non-finite loss or gradient')
            elif case['missing_grads']:
                problems.append(f'{key}: no gradient for {case["missing_grads"]}')
            elif not case['ext_op_calls'] or case['reference_op_calls']:
                problems.append(f'{key}: the fused run called {case["ext_op_calls"]} '
                                f'dualformer kernels, the reference run '
                                f'{case["reference_op_calls"]}')
            elif not case['max_rel'] <= GRAD_RTOL[precision]:
                problems.append(f'{key}: gradient of {case["max_rel_param"]} differs by '
                                f'{case["max_rel"]:.2e} (tolerance {GRAD_RTOL[precision]:.0e})')
    return result('fail' if problems else 'pass', figures, '\n'.join(problems))


# (batch, height, width) of bench_ops' stage-1 cases in the dry run, named for what they are.
BENCH_DRY_SHAPES = {'64x64 b2': (2, 64, 64), '64x96 b1': (1, 64, 96)}


def step_bench_ops(ctx: Context) -> Dict[str, Any]:
    """``bench_ops.py`` with the bandwidth rows; the dry run shrinks its shapes."""
    log = osp.join(ctx.log_dir(), 'bench_ops.log')
    script = osp.join(ROOT, 'tools', 'benchmarks', 'bench_ops.py')
    if ctx.dry_run:
        # The script's own main() and JSON output, on shapes small enough for CI.
        code = ('import runpy, sys; sys.argv = [sys.argv[1]] + sys.argv[2:]; '
                'sys.path.insert(0, __import__("os").path.dirname(sys.argv[0])); '
                'import bench_ops; '
                f'bench_ops.SHAPES = {BENCH_DRY_SHAPES!r}; '
                'bench_ops.BANDWIDTH_SHAPES = dict(bench_ops.SHAPES); bench_ops.main()')
        cmd = [ctx.python, '-c', code, script, '--device', 'cpu', '--repeat', '1',
               '--threads', '1', '--bandwidth', '--json']
    else:
        cmd = [ctx.python, script, '--device', 'cuda', '--repeat', '20', '--json']
    with open(log, 'w'):
        pass
    json_log = osp.join(ctx.log_dir(), 'bench_ops.json')
    with open(json_log, 'w') as out, open(log, 'a') as err:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=err, timeout=600, text=True)
    if proc.returncode != 0:
        return result('fail', details=f'bench_ops.py failed (rc {proc.returncode}):\n'
                      f'{_tail(log)}')
    text = _tail(json_log, 10 ** 7)
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


THROUGHPUT_MODELS = ('dualformer-xs', 'dualformer-s', 'swin-t', 'convnext-t')
THROUGHPUT_DRY_MODELS = ('dualformer-xs', 'swin-t')


def throughput_command(ctx: Context, json_path: str) -> List[str]:
    """``throughput.py`` under AMP at 224 on the GPU (64 px on the CPU for the dry run)."""
    script = osp.join(ROOT, 'tools', 'benchmarks', 'throughput.py')
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
    """Backbone images/s under AMP, DualFormer against Swin-T and ConvNeXt-T."""
    log = osp.join(ctx.log_dir(), 'throughput.log')
    json_path = osp.join(ctx.log_dir(), 'throughput.json')
    proc = _run(throughput_command(ctx, json_path), log, timeout=600)
    if proc.returncode != 0 or not osp.exists(json_path):
        return result('fail', details=f'throughput.py failed (rc {proc.returncode}):\n'
                      f'{_tail(log)}')
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
    met = None if ctx.dry_run or ratio is None else ratio >= XS_MIN_RATIO
    return result('fail' if failed else 'pass', figures,
                  f'failed models: {failed}' if failed else '', target_met=met)


# ---------------------------------------------------------------------------------------------
# Tier 2: the real configs through the real tools, on a few generated images

TASKS = {
    'cls': ('configs/mmpretrain/dualformer_s_in1k.py', 'make_imagenet', 'epoch'),
    'det': ('configs/mmdet/mask_rcnn_dualformer_s_1x.py', 'make_coco', 'epoch'),
    'seg': ('configs/mmseg/upernet_dualformer_s_ade20k.py', 'make_ade20k', 'iter'),
}

# Tiny pipelines for the CPU dry run; on a GPU the configs' own pipelines run.
DRY_PIPELINES = {
    'cls': '''
train_pipeline = [dict(type='LoadImageFromFile'),
                  dict(type='RandomResizedCrop', scale=64, backend='pillow'),
                  dict(type='PackInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='CenterCrop', crop_size=64),
                 dict(type='PackInputs')]
''',
    'det': '''
train_pipeline = [dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                  dict(type='Resize', scale=(96, 96), keep_ratio=True),
                  dict(type='PackDetInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(96, 96),
                                                      keep_ratio=True),
                 dict(type='PackDetInputs',
                      meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                 'scale_factor'))]
model = dict(train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                            rcnn=dict(sampler=dict(num=64))),
             test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)))
''',
    'seg': '''
crop_size = (64, 64)
train_pipeline = [dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='RandomCrop', crop_size=crop_size),
                  dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
model = dict(data_preprocessor=dict(size=crop_size))
''',
}

# Runs after training, in the training process (so under the launcher the tools chose): one
# predict step of the trained model on the first test batch, summarised to JSON by rank 0.
PREDICT_HOOK = '''
import json, os
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class GpuCheckPredictHook(Hook):
    """After training, run model.test_step on one test batch and write a summary."""

    def __init__(self, out):
        self.out = out

    def after_run(self, runner):
        loader = runner.build_dataloader(runner.cfg.test_dataloader)
        batch = next(iter(loader))
        model = runner.model
        model.eval()
        with torch.no_grad():
            samples = model.test_step(batch)
        summary = []
        for s in samples:
            item = {}
            if 'pred_instances' in s:
                item['boxes'] = int(len(s.pred_instances))
                item['has_masks'] = 'masks' in s.pred_instances
            if 'pred_sem_seg' in s:
                item['seg_shape'] = list(s.pred_sem_seg.data.shape)
            if 'pred_score' in s:
                item['num_scores'] = int(s.pred_score.numel())
                item['scores_finite'] = bool(torch.isfinite(s.pred_score).all())
            summary.append(item)
        if get_rank() == 0:
            with open(self.out, 'w') as f:
                json.dump(dict(samples=summary, world_size=int(os.environ.get('WORLD_SIZE', 1)),
                               device=str(next(runner.model.parameters()).device)), f)
'''


def tier2_override(task: str, data_root: str, dry_run: bool) -> str:
    """Body of the override config of one tier-2 task; its ``_base_`` is the real config.

    Only the data (two generated images, one batch: exactly one training iteration), the
    schedule (that one iteration, no validation, no checkpoint) and, for the CPU dry run, the
    pipelines (tiny images) change; the model, optimizer and AMP settings are the config's.
    """
    base, _, loop = TASKS[task]
    lines = [f"_base_ = '{osp.join(ROOT, base)}'",
             f"data_root = '{data_root}" + ("/'" if task == 'det' else "'")]
    if dry_run:
        lines.append(DRY_PIPELINES[task])
    with_pipeline = ', pipeline={}_pipeline'.format
    for split, pipeline in (('train', 'train'), ('test', 'test')):
        lines.append(f'{split}_dataloader = dict(batch_size=2, num_workers=0, '
                     f'persistent_workers=False, dataset=dict(data_root=data_root'
                     f'{with_pipeline(pipeline) if dry_run else ""}))')
    lines += [
        'val_dataloader = None', 'val_cfg = None', 'val_evaluator = None',
        "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=1)"
        if loop == 'epoch' else
        "train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1)",
        'default_hooks = dict(logger=dict(interval=1), checkpoint=None)',
        "custom_imports = dict(imports=['dualformer_mm', 'gpu_check_hooks'], "
        'allow_failed_imports=False)',
    ]
    return '\n'.join(lines) + '\n'


def step_train_task(task: str) -> Callable[[Context], Dict[str, Any]]:
    """The tier-2 step of one task: generate data, one (AMP) iteration, one predict step."""

    def run(ctx: Context) -> Dict[str, Any]:
        sys.path.insert(0, ROOT)
        sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
        from mmengine.config import Config
        from runner_env import replace_norm_type
        import tests.test_tools as data_tools
        # Data and work dir in a temporary folder; the training log is copied to logs/.
        work = tempfile.mkdtemp(prefix=f'gpu_check_{task}_')
        data = getattr(data_tools, TASKS[task][1])(
            __import__('pathlib').Path(work) / 'data', num=2,
            **({} if task != 'det' else {'size': 96}))
        with open(osp.join(work, 'gpu_check_hooks.py'), 'w') as f:
            f.write(PREDICT_HOOK)
        predict_out = osp.join(work, 'predict.json')
        sync_bn = ctx.num_gpus >= 2 and not ctx.dry_run
        override = osp.join(work, f'{task}_override.py')
        with open(override, 'w') as f:
            f.write(tier2_override(task, str(data), ctx.dry_run))
        # The hook module is imported by the training process (PYTHONPATH), not here.
        cfg = Config.fromfile(override, import_custom_modules=False)
        # Appended to the config's own hooks (RandomStateHook), which stay.
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='GpuCheckPredictHook', out=predict_out)]
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
            env = dict(os.environ, PYTHON=ctx.python, PORT=str(_free_port()),
                       PYTHONPATH=os.pathsep.join([work, ROOT, os.environ.get('PYTHONPATH', '')]))
            proc = _run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), final, '2', *amp,
                         '--work-dir', work_dir],
                        osp.join(ctx.log_dir(), f'train_{task}.log'), timeout=900, env=env)
            rc = proc.returncode
        else:
            # One process: tools/train.py's main() here, which saves a second interpreter's
            # imports; this process is the step's own, so a crash still stays in the step.
            rc = run_train_py(final, amp + ['--work-dir', work_dir], extra_path=work)
        figures: Dict[str, Any] = dict(config=TASKS[task][0], amp=bool(amp),
                                       processes=2 if sync_bn else 1,
                                       norm='SyncBN' if sync_bn else f'BN ({converted} SyncBN '
                                       'replaced)', seconds=round(time.time() - start, 1))
        logs = sorted(glob.glob(osp.join(work_dir, '*', '*.log')))
        text = _tail(logs[-1], 10 ** 6) if logs else ''
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


def run_train_py(config: str, options: List[str], extra_path: str) -> int:
    """``tools/train.py CONFIG OPTIONS`` run in this process; its exit status."""
    sys.path.insert(0, extra_path)
    spec = importlib.util.spec_from_file_location('gpu_check_train',
                                                  osp.join(ROOT, 'tools', 'train.py'))
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


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def step_dist_train_det(ctx: Context) -> Dict[str, Any]:
    """``tools/dist_train.sh`` on the detection demo config, 2 GPUs, four iterations."""
    from dualformer_mm.demo.synthetic import make_detection
    import numpy as np
    work = tempfile.mkdtemp(prefix='gpu_check_dist_')
    data = osp.join(work, 'coco')
    # 32 training images at 4 per GPU on 2 GPUs: 4 iterations, then the demo's validation.
    make_detection(data, np.random.RandomState(0), dict(train=32, val=4))
    override = osp.join(work, 'det_demo.py')
    with open(override, 'w') as f:
        f.write(f"_base_ = '{osp.join(ROOT, 'configs', 'demo', 'det_dualformer_t_demo.py')}'\n"
                f"data_root = '{data}/'\n"
                'train_dataloader = dict(dataset=dict(data_root=data_root))\n'
                'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
                "test_dataloader = val_dataloader\n"
                "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')\n"
                'test_evaluator = val_evaluator\n'
                'train_cfg = dict(max_epochs=1, val_interval=1)\n'
                'default_hooks = dict(logger=dict(interval=1))\n')
    log = osp.join(ctx.log_dir(), 'dist_train_det.log')
    env = dict(os.environ, PYTHON=ctx.python, PORT=str(_free_port()))
    start = time.time()
    proc = _run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), override, '2', '--work-dir',
                 osp.join(work, 'work')], log, timeout=900, env=env)
    text = _tail(log, 10 ** 6)
    figures = dict(seconds=round(time.time() - start, 1),
                   iterations=len(re.findall(r'Epoch\(train\)\s+\[1\]\[\s*\d+/4\]', text)),
                   cpu_fallback='CUDA is not available' in text)
    ok = proc.returncode == 0 and 'Epoch(train) [1][4/4]' in text and \
        not figures['cpu_fallback'] and 'coco/bbox_mAP' in text
    return result('pass' if ok else 'fail', figures, '' if ok else _tail(log))


# ---------------------------------------------------------------------------------------------
# The steps and the runner


def _needs_cuda(ctx: Context, env: Dict[str, Any]) -> Optional[str]:
    return NEEDS_CUDA if ctx.dry_run else None


def _needs_full_stack(ctx: Context, env: Dict[str, Any]) -> Optional[str]:
    missing = [n for n in ('mmpretrain', 'mmdet', 'mmseg') if importlib.util.find_spec(n) is None]
    if missing:
        return f'skipped: needs {", ".join(missing)} (tier 2)'
    flavour = mmcv_ops_flavour()
    if flavour == 'lite':
        return 'skipped: needs mmcv with compiled ops, not mmcv-lite (tier 2)'
    if not ctx.dry_run and flavour != 'cuda':
        return 'skipped: needs mmcv with CUDA ops (installed: CPU-only ops) (tier 2)'
    return None


def _needs_two_gpus(ctx: Context, env: Dict[str, Any]) -> Optional[str]:
    if ctx.dry_run:
        return 'skipped: needs 2+ CUDA GPUs'
    if ctx.num_gpus < 2:
        return f'skipped: needs 2+ CUDA GPUs ({ctx.num_gpus} visible)'
    return _needs_full_stack(ctx, env)


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
        return 'cuda' if _load_cuda_arch().library_has_cuda(f.read()) else 'cpu'


STEPS: List[Step] = [
    Step('environment', 1, 'versions, GPUs, compiled flavours', step_environment, 120),
    Step('build_ext', 1, 'dualformer_mm._ext built for the visible GPU', step_build_ext, 450,
         _needs_cuda),
    Step('cuda_tests', 1, 'pytest -m cuda', step_cuda_tests, 650),
    Step('train_step', 1, 'DualFormer-S step, fused vs reference, BN/GN x fp32/fp16/bf16',
         step_train_step, 300),
    Step('bench_ops', 1, 'bench_ops.py: fused vs reference, softmax-pool bandwidth',
         step_bench_ops, 650),
    Step('throughput', 1, 'throughput.py --amp at 224: DualFormer vs Swin-T, ConvNeXt-T',
         step_throughput, 650),
    Step('train_cls', 2, 'dualformer_s_in1k: one --amp iteration and a predict step',
         step_train_task('cls'), 950, _needs_full_stack),
    Step('train_det', 2, 'mask_rcnn_dualformer_s_1x: one --amp iteration and a predict step',
         step_train_task('det'), 950, _needs_full_stack),
    Step('train_seg', 2, 'upernet_dualformer_s_ade20k: one --amp iteration and a predict step',
         step_train_task('seg'), 950, _needs_full_stack),
    Step('dist_train_det', 2, 'tools/dist_train.sh on the detection demo config, 2 GPUs',
         step_dist_train_det, 950, _needs_two_gpus),
]
STEP_NAMES = [s.name for s in STEPS]


def run_step_in_child(step: Step, ctx: Context, argv_extra: List[str]) -> Dict[str, Any]:
    """Run ``step`` in a fresh interpreter; its result, or a failure with the log's tail."""
    log = osp.join(ctx.log_dir(), f'{step.name}.child.log')
    result_path = osp.join(ctx.log_dir(), f'{step.name}.result.json')
    if osp.exists(result_path):
        os.remove(result_path)
    cmd = [ctx.python, osp.abspath(__file__), '--run-step', step.name, '--result', result_path,
           '--out', ctx.out, *argv_extra]
    start = time.time()
    try:
        with open(log, 'w') as f:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=step.timeout, text=True)
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    seconds = time.time() - start
    if osp.exists(result_path):
        with open(result_path) as f:
            res = json.load(f)
    elif rc is None:
        res = result('fail', details=f'timed out after {step.timeout} s:\n{_tail(log)}')
    else:
        res = result('fail', details=f'the step process ended with rc {rc}:\n{_tail(log)}')
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


def _fmt_figures(figures: Dict[str, Any], limit: int = 400) -> str:
    text = json.dumps(figures, default=str)
    return text if len(text) <= limit else text[:limit] + ' ...'


def write_report(out: str, report: Dict[str, Any]) -> None:
    """``report.json`` (everything) and ``report.md`` (a table for people)."""
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
    with open(osp.join(out, 'report.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
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
    env_figures: Dict[str, Any] = {}
    for step in STEPS:
        if args.steps is not None and step.name not in args.steps:
            res = result('skipped: not selected (--steps)')
        elif step.tier > args.tier:
            res = result(f'skipped: not selected (--tier {args.tier})')
        else:
            reason = step.needs(ctx, env_figures)
            if reason:
                res = result(reason)
            else:
                print(f'[gpu_check] {step.name}: {step.title} ...', flush=True)
                res = run_step_in_child(step, ctx, extra)
        if step.name == 'environment':
            env_figures = res.get('figures', {})
        res.setdefault('seconds', 0.0)
        results[step.name] = res
        print(f'[gpu_check] {step.name}: {res["status"]} ({res["seconds"]:.1f} s)', flush=True)
    report = dict(
        mode='dry run on CPU, tiny sizes' if args.dry_run else 'GPU',
        started=started, seconds=time.time() - start, python=platform.python_version(),
        gpus=results['environment'].get('figures', {}).get('gpus', []),
        steps=[dict(name=s.name, tier=s.tier, title=s.title, target=TARGETS.get(s.name),
                    **results[s.name]) for s in STEPS],
        targets=target_lines(results, args.dry_run))
    write_report(out, report)
    failed = [n for n, r in results.items() if r['status'] == 'fail']
    print(f'[gpu_check] report: {osp.join(out, "report.md")}; '
          + (f'FAILED: {", ".join(failed)}' if failed else 'no step failed'), flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
