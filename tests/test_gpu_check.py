"""tools/gpu_check.sh without a GPU: its one-line refusal, and ``--dry-run``, which runs every
step that can on the CPU at tiny sizes and writes the report; the pieces the GPU run relies
on (the ``cuda`` marker, the bandwidth arithmetic of bench_ops, the target judgements, the
report's last line on whether to set ``DUALFORMER_OPS=ext``, the tier-2 configs and the
predict hook), tested in-process on fabricated results.

No figure is asserted against a target here: on a CPU the targets are not judged.
"""
import copy
import doctest
import functools
import importlib
import importlib.util
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys
import types

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')


def _import_from(folder, *names):
    """Import ``names`` as a process whose PYTHONPATH holds ``folder`` does (tools/gpu_check.sh
    puts tools/ there; bench_ops.py is a script in tools/benchmarks)."""
    sys.path.insert(0, folder)
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(folder)


MODULES = ('bench_ops_dry', 'common', 'predict_hook', 'report', 'run', 'tier1', 'tier1_bench',
           'tier1_kernels', 'tier2_config')
gpu_check = types.SimpleNamespace(**dict(zip(MODULES, _import_from(
    TOOLS, *(f'gpu_check.{name}' for name in MODULES)))))


def _script(*args, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='2')
    return subprocess.run(['bash', osp.join(ROOT, 'tools', 'gpu_check.sh'), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal without a GPU')
def test_without_gpu_exits_2_with_one_line(tmp_path):
    out = _script('--out', str(tmp_path / 'r'))
    assert out.returncode == 2
    assert out.stdout == ''
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'no CUDA GPU is visible' in lines[0] and '--dry-run' in lines[0]
    assert not (tmp_path / 'r').exists()


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check')
    proc = _script('--dry-run', '--out', str(out), timeout=850)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(out / 'report.json') as f:
        return out, json.load(f), proc.stdout


def test_dry_run_reports_every_step(dry_run):
    out, report, stdout = dry_run
    steps = {s['name']: s for s in report['steps']}
    assert list(steps) == gpu_check.run.STEP_NAMES
    assert report['mode'].startswith('dry run')
    assert steps['build_ext']['status'] == 'skipped: needs CUDA'
    assert steps['dist_train_det']['status'].startswith('skipped: needs 2+ CUDA GPUs')
    tier2 = ('train_cls', 'train_det', 'train_seg')
    stack = all(importlib.util.find_spec(n) for n in ('mmpretrain', 'mmdet', 'mmseg'))
    for name, step in steps.items():
        if name in ('build_ext', 'cuda_tests', 'dist_train_det') or (name in tier2
                                                                     and not stack):
            assert step['status'].startswith('skipped'), (name, step)
        else:
            assert step['status'] == 'pass', (name, step['details'][-2000:])
    md = (out / 'report.md').read_text()
    for name in gpu_check.run.STEP_NAMES:
        assert f'| {name} |' in md
    assert md.count('| not judged |') == 4
    assert 'FAILED' not in stdout and 'no step failed' in stdout
    # Both end with the verdict on the kernels, which a dry run cannot give.
    line = report['kernels']['line']
    assert report['kernels']['opt_in'] is None and 'dry run' in line
    assert md.rstrip('\n').splitlines()[-1] == line
    assert stdout.rstrip('\n').splitlines()[-1] == f'[gpu_check] {line}'


def test_dry_run_collects_the_cuda_tests(dry_run):
    _, report, _ = dry_run
    step = next(s for s in report['steps'] if s['name'] == 'cuda_tests')
    assert step['status'] == 'skipped: needs CUDA'
    assert 'tests/test_partition_ops.py' in step['figures']['files']
    assert step['figures']['collected'] > 0


def test_dry_run_training_step_compares_backends(dry_run):
    _, report, _ = dry_run
    figures = next(s for s in report['steps'] if s['name'] == 'train_step')['figures']
    assert figures['cuda_kernels_verified'] is False  # what `auto` runs on CUDA, recorded
    for norm in ('BN', 'GN'):
        for precision in ('fp32', 'fp16', 'bf16'):
            case = figures[f'{norm}_{precision}']
            assert case['finite'] and case['missing_grads'] == []
            assert case['ext_op_calls'] > 0 and case['reference_op_calls'] == 0
            assert case['max_rel'] <= gpu_check.tier1_kernels.GRAD_RTOL[precision]
            # The same weights and input: the two backends' losses agree closely.
            assert case['loss_ext'] == pytest.approx(case['loss_reference'], rel=0.05)


def test_dry_run_benchmarks(dry_run):
    _, report, _ = dry_run
    steps = {s['name']: s for s in report['steps']}
    bench = steps['bench_ops']['figures']
    assert set(bench['bandwidth']) == set(gpu_check.bench_ops_dry.DRY_SHAPES)
    assert all(0 < b['fraction'] for b in bench['bandwidth'].values())
    assert bench['pipeline_min_speedup'] > 0
    assert steps['bench_ops']['target_met'] is None  # not judged on a CPU
    tp = steps['throughput']['figures']
    assert set(gpu_check.tier1_bench.THROUGHPUT_DRY_MODELS) <= set(tp)
    assert all(tp[m]['img_per_s'] > 0 for m in gpu_check.tier1_bench.THROUGHPUT_DRY_MODELS)
    assert tp['xs_over_swin_t'] == pytest.approx(tp['dualformer-xs']['ratio_to_swin_t'])
    # The targets are about the kernels: the step runs them whatever `auto` would pick.
    assert tp['dualformer_ops'] == dict(mode='ext', extension=True, kernels=True)
    assert steps['throughput']['target_met'] is None


def test_dry_run_tier2_trains_and_predicts(dry_run):
    _, report, _ = dry_run
    steps = {s['name']: s for s in report['steps']}
    if steps['train_det']['status'].startswith('skipped'):
        pytest.skip(steps['train_det']['status'])
    for task in ('cls', 'det', 'seg'):
        figures = steps[f'train_{task}']['figures']
        # One process: the configs' SyncBN became BN, and one iteration logged a loss.
        assert figures['processes'] == 1 and figures['norm'].startswith('BN (')
        assert math.isfinite(float(figures['loss']))
        samples = figures['predict']['samples']
        assert len(samples) == 2 and figures['predict']['device'] == 'cpu'
    assert all('boxes' in s and s['has_masks'] for s in steps['train_det']['figures'][
        'predict']['samples'])
    assert all(s['seg_shape'][0] == 1 for s in steps['train_seg']['figures']['predict'][
        'samples'])
    assert all(s['scores_finite'] for s in steps['train_cls']['figures']['predict']['samples'])
    # SyncBN is in the detection and segmentation configs, so something was replaced there.
    assert not steps['train_det']['figures']['norm'].startswith('BN (0 ')


def test_cuda_marker_selects_exactly_the_cuda_cases():
    from tests.utils import CUDA, DEVICES
    assert [m.name for m in CUDA.marks] == ['cuda', 'skipif'] and CUDA in DEVICES
    out = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'cuda', '--collect-only', '-q',
                          '-p', 'no:cacheprovider', 'tests/test_partition_ops.py'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:]
    ids = [line for line in out.stdout.splitlines() if '::' in line]
    # Every selected case is a CUDA case, and the CPU cases were deselected.
    assert ids and all('cuda' in i.split('[', 1)[1].rstrip(']').split('-') for i in ids)
    assert re.search(rf'{len(ids)}/\d+ tests collected \(\d+ deselected\)', out.stdout)


def test_bandwidth_fraction_arithmetic():
    bench_ops = _load_bench_ops()
    # 300 bytes in 2 ms against a copy moving 400 bytes in 2 ms: 75% of its bandwidth.
    assert bench_ops.bandwidth_fraction(300, 2.0, 400, 2.0) == pytest.approx(0.75)
    assert bench_ops.bandwidth_fraction(400, 1.0, 400, 2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match='must be > 0'):
        bench_ops.bandwidth_fraction(300, 0.0, 400, 2.0)
    assert doctest.testmod(bench_ops).failed == 0


def _load_bench_ops():
    return _import_from(osp.join(TOOLS, 'benchmarks'), 'bench_ops')[0]


def test_softmax_pool_bandwidth_counts_the_bytes_on_cpu(monkeypatch):
    from dualformer_mm import ops
    if not ops.extension_available('cpu'):
        pytest.skip('needs dualformer_mm._ext')
    bench_ops = _load_bench_ops()
    monkeypatch.setitem(bench_ops.BANDWIDTH_SHAPES, 'tiny', (2, 64, 64))
    row = bench_ops.softmax_pool_bandwidth('tiny', 'cpu', repeat=2)
    t = bench_ops.make_inputs((2, 64, 64), 'cpu')
    g, n, d = t['x'].shape
    inputs = 2 * g * n * d * 4 + g * n * 8  # fp32 scores and values, int64 codes
    assert row['copy_bytes'] == 2 * inputs
    assert row['op_bytes'] == inputs + g * bench_ops.PARTS * d * 4
    assert row['fraction'] == pytest.approx(row['op_gbps'] / row['copy_gbps'])
    assert row['op_ms'] > 0 and row['copy_ms'] > 0


def test_targets_are_judged_on_gpu_figures():
    rows = [dict(op='pipeline', shape='a', speedup=3.5), dict(op='pipeline', shape='b',
                                                              speedup=2.9),
            dict(op='partition_softmax_pool:bandwidth', shape='a', fraction=0.2, op_gbps=1.0,
                 copy_gbps=5.0, op_bytes=10),
            dict(op='partition_softmax_pool:bandwidth', shape='big', fraction=0.7, op_gbps=7.0,
                 copy_gbps=10.0, op_bytes=10 ** 8)]
    bench, report = gpu_check.tier1_bench, gpu_check.report
    figures = bench.summarize_bench(rows)
    assert figures['pipeline_min_speedup'] == 2.9 and figures['bandwidth_shape'] == 'big'
    assert not bench.bench_targets_met(figures)  # 2.9x < 3x
    rows[1]['speedup'] = 3.1
    assert bench.bench_targets_met(bench.summarize_bench(rows))
    steps = {'cuda_tests': dict(figures=dict(passed=10, failures=0, errors=0, skipped=0),
                                target_met=True),
             'bench_ops': dict(figures=bench.summarize_bench(rows)),
             'throughput': dict(figures=dict(xs_over_swin_t=1.5), target_met=False)}
    met = [t['met'] for t in report.target_lines(steps, dry_run=False)]
    assert met == [True, True, True, False]
    assert [t['met'] for t in report.target_lines(steps, dry_run=True)][1:] == [None] * 3


def test_junit_counts_of_the_cuda_test_run(tmp_path):
    # The format pytest --junitxml writes, as the GPU run reads it.
    xml = tmp_path / 'r.xml'
    xml.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
                   'errors="1" failures="2" skipped="3" tests="10" time="1.0"></testsuite>'
                   '</testsuites>')
    assert gpu_check.tier1.junit_counts(str(xml)) == dict(tests=10, failures=2, errors=1,
                                                          skipped=3, passed=4)


def test_build_env_builds_for_the_visible_gpu_only():
    env = gpu_check.tier1.build_ext_env({'TORCH_CUDA_ARCH_LIST': '7.5;8.0', 'PATH': '/bin'})
    assert 'TORCH_CUDA_ARCH_LIST' not in env and env['DUALFORMER_CUDA'] == '1'


# --- the report's last line: whether to set DUALFORMER_OPS=ext on this machine -------------

GPU = 'NVIDIA H200 (sm_90)'


def _kernel_steps(**status):
    """Fabricated results of the steps that compare the kernels with the reference."""
    steps = {name: dict(status='pass', figures={}) for name in gpu_check.report.KERNEL_STEPS}
    for name, value in status.items():
        steps[name]['status'] = value
    return steps


def test_verdict_opts_in_only_when_every_comparison_passed():
    verdict = gpu_check.report.kernels_verdict
    ok = verdict(_kernel_steps(), [GPU], dry_run=False)
    assert ok == dict(opt_in=True, line=f'CUDA kernels match the reference on {GPU}: set '
                      'DUALFORMER_OPS=ext to use them.')
    for name in gpu_check.report.KERNEL_STEPS:
        failed = verdict(_kernel_steps(**{name: 'fail'}), [GPU], dry_run=False)
        assert failed['opt_in'] is False
        assert failed['line'].startswith(f'CUDA kernels do NOT match the reference on {GPU} '
                                         f'({name} failed): do NOT set DUALFORMER_OPS=ext')
    # A comparison that did not run (--steps, --tier 1, a missing GPU build) is no pass.
    partial = verdict(_kernel_steps(cuda_tests='skipped: not selected (--steps)'), [GPU], False)
    assert partial['opt_in'] is False and 'do NOT set DUALFORMER_OPS=ext' in partial['line']
    assert 'cuda_tests: skipped: not selected (--steps)' in partial['line']
    steps = _kernel_steps()
    del steps['train_step']
    assert 'train_step: not run' in verdict(steps, [GPU], dry_run=False)['line']
    dry = verdict(_kernel_steps(), [], dry_run=True)
    assert dry['opt_in'] is None and dry['line'].startswith(
        'CUDA kernels not compared with the reference (dry run on the CPU)')


def test_verdict_after_the_kernels_become_the_default():
    # Once CUDA_KERNELS_VERIFIED is True (train_step records it), `auto` runs the kernels:
    # a user whose GPU fails the comparison must turn them off instead.
    verdict = gpu_check.report.kernels_verdict
    steps = _kernel_steps()
    steps['train_step']['figures'] = dict(cuda_kernels_verified=True)
    assert verdict(steps, [GPU], False)['line'].endswith(
        'the default (DUALFORMER_OPS=auto) runs them.')
    steps['cuda_tests']['status'] = 'fail'
    assert verdict(steps, [GPU], False)['line'].endswith('set DUALFORMER_OPS=reference.')


def test_report_ends_with_the_verdict(tmp_path):
    steps = _kernel_steps(train_step='fail')
    steps['train_step']['details'] = 'BN_fp16: gradient of x differs'
    report = dict(mode='GPU', started='2025-01-01T00:00:00', seconds=1.0, gpus=[GPU],
                  python='3.11', steps=[dict(name=n, tier=1, **r) for n, r in steps.items()],
                  targets=[], kernels=gpu_check.report.kernels_verdict(steps, [GPU], False))
    gpu_check.report.write_report(str(tmp_path), report)
    md = (tmp_path / 'report.md').read_text().splitlines()
    assert '## Failures' in md and md[-1] == report['kernels']['line']
    assert 'do NOT set DUALFORMER_OPS=ext' in md[-1]
    assert json.loads((tmp_path / 'report.json').read_text())['kernels']['opt_in'] is False


# --- tier 2: the real configs, changed only where the check needs it --------------------------

@functools.lru_cache(maxsize=None)
def _real_config(task):
    from mmengine.config import Config
    return Config.fromfile(osp.join(ROOT, gpu_check.tier2_config.TASKS[task][0]),
                           import_custom_modules=False)


def _tier2_config(task, dry_run, tmp_path):
    """The tier-2 config of ``task``, dumped and read back as the training process reads it."""
    from mmengine.config import Config
    cfg = gpu_check.tier2_config.tier2_config(task, str(tmp_path / 'data'), dry_run,
                                              str(tmp_path / 'predict.json'))
    cfg.dump(str(tmp_path / 'final.py'))
    return Config.fromfile(str(tmp_path / 'final.py'), import_custom_modules=False)


@pytest.mark.parametrize('task', ['cls', 'det', 'seg'])
def test_tier2_config_trains_the_real_config_once(task, tmp_path):
    base, cfg = _real_config(task), _tier2_config(task, False, tmp_path)
    one = dict(max_epochs=1) if task != 'seg' else dict(max_iters=1)
    assert {k: v for k, v in cfg.train_cfg.items() if k != 'type'} == one
    assert cfg.val_dataloader is None and cfg.val_cfg is None and cfg.val_evaluator is None
    for split in ('train', 'test'):
        loader = cfg[f'{split}_dataloader']
        assert (loader.batch_size, loader.num_workers, loader.persistent_workers) == (2, 0, False)
        assert loader.dataset.data_root.rstrip('/') == str(tmp_path / 'data')
        # On a GPU the config's own pipelines run.
        assert loader.dataset.pipeline == base[f'{split}_dataloader'].dataset.pipeline
    # The model, the optimizer and the config's hooks are the config's.
    assert cfg.model == base.model and cfg.optim_wrapper == base.optim_wrapper
    assert cfg.custom_imports.imports == ['dualformer_mm', 'gpu_check.predict_hook']
    assert [h.type for h in cfg.custom_hooks] == ['RandomStateHook', 'GpuCheckPredictHook']
    assert cfg.custom_hooks[-1].out == str(tmp_path / 'predict.json')
    assert cfg.default_hooks.checkpoint is None and cfg.default_hooks.logger.interval == 1


def test_tier2_dry_config_shrinks_only_data_and_proposals(tmp_path):
    base, cfg = _real_config('det'), _tier2_config('det', True, tmp_path)
    for split in ('train', 'test'):
        assert (cfg[f'{split}_dataloader'].dataset.pipeline
                == gpu_check.tier2_config.DRY_PIPELINES['det'][split])
    expected = copy.deepcopy(base)
    expected.merge_from_dict(dict(model=copy.deepcopy(gpu_check.tier2_config.DRY_MODEL['det'])))
    assert cfg.model == expected.model != base.model
    assert cfg.model.train_cfg.rcnn.sampler.num == 64 < base.model.train_cfg.rcnn.sampler.num
    assert cfg.model.backbone == base.model.backbone


def test_dist_demo_config_reads_the_generated_data(tmp_path):
    cfg = gpu_check.tier2_config.dist_demo_config(str(tmp_path))
    root = f'{tmp_path}/'
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.data_root == root
    assert cfg.val_evaluator.ann_file == cfg.test_evaluator.ann_file == (
        root + 'annotations/instances_val.json')
    assert (cfg.train_cfg.max_epochs, cfg.train_cfg.val_interval) == (1, 1)
    assert cfg.train_dataloader.batch_size == 4  # the demo's: 32 images on 2 GPUs, 4 iterations


def test_predict_hook_summarizes_each_kind_of_prediction():
    from mmengine.structures import BaseDataElement, InstanceData, PixelData
    det = BaseDataElement(pred_instances=InstanceData(bboxes=torch.zeros(3, 4),
                                                      masks=torch.zeros(3, 8, 8, dtype=torch.bool)))
    seg = BaseDataElement(pred_sem_seg=PixelData(data=torch.zeros(1, 8, 8)))
    cls = BaseDataElement(pred_score=torch.tensor([0.5, float('nan')]))
    assert gpu_check.predict_hook.summarize([det, seg, cls]) == [
        dict(boxes=3, has_masks=True), dict(seg_shape=[1, 8, 8]),
        dict(num_scores=2, scores_finite=False)]


def test_docstring_examples():
    for name in ('common', 'predict_hook', 'report', 'tier1'):
        result = doctest.testmod(getattr(gpu_check, name))
        assert result.failed == 0 and result.attempted > 0, name
