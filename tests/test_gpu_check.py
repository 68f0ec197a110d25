"""tools/gpu_check.sh without a GPU: its one-line refusal, and ``--dry-run``, which runs every
step that can on the CPU at tiny sizes and writes the report; the pieces the GPU run relies
on (the ``cuda`` marker, the bandwidth arithmetic of bench_ops, the target judgements).

No figure is asserted against a target here: on a CPU the targets are not judged.
"""
import doctest
import importlib.util
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load(relpath, name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load('tools/gpu_check.py', 'gpu_check_under_test')


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
    assert list(steps) == gpu_check.STEP_NAMES
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
    for name in gpu_check.STEP_NAMES:
        assert f'| {name} |' in md
    assert md.count('| not judged |') == 4
    assert 'FAILED' not in stdout and 'no step failed' in stdout


def test_dry_run_collects_the_cuda_tests(dry_run):
    _, report, _ = dry_run
    step = next(s for s in report['steps'] if s['name'] == 'cuda_tests')
    assert step['status'] == 'skipped: needs CUDA'
    assert 'tests/test_partition_ops.py' in step['figures']['files']
    assert step['figures']['collected'] > 0


def test_dry_run_training_step_compares_backends(dry_run):
    _, report, _ = dry_run
    figures = next(s for s in report['steps'] if s['name'] == 'train_step')['figures']
    for norm in ('BN', 'GN'):
        for precision in ('fp32', 'fp16', 'bf16'):
            case = figures[f'{norm}_{precision}']
            assert case['finite'] and case['missing_grads'] == []
            assert case['max_rel'] <= gpu_check.GRAD_RTOL[precision]
            # The same weights and input: the two backends' losses agree closely.
            assert case['loss_ext'] == pytest.approx(case['loss_reference'], rel=0.05)


def test_dry_run_benchmarks(dry_run):
    _, report, _ = dry_run
    steps = {s['name']: s for s in report['steps']}
    bench = steps['bench_ops']['figures']
    assert set(bench['bandwidth']) == set(gpu_check.BENCH_DRY_SHAPES)
    assert all(0 < b['fraction'] for b in bench['bandwidth'].values())
    assert bench['pipeline_min_speedup'] > 0
    assert steps['bench_ops']['target_met'] is None  # not judged on a CPU
    tp = steps['throughput']['figures']
    assert set(gpu_check.THROUGHPUT_DRY_MODELS) <= set(tp)
    assert all(tp[m]['img_per_s'] > 0 for m in gpu_check.THROUGHPUT_DRY_MODELS)
    assert tp['xs_over_swin_t'] == pytest.approx(tp['dualformer-xs']['ratio_to_swin_t'])
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
    sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
    try:
        return _load('tools/benchmarks/bench_ops.py', 'bench_ops_under_test')
    finally:
        sys.path.remove(osp.join(ROOT, 'tools', 'benchmarks'))


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
    figures = gpu_check.summarize_bench(rows)
    assert figures['pipeline_min_speedup'] == 2.9 and figures['bandwidth_shape'] == 'big'
    assert not gpu_check.bench_targets_met(figures)  # 2.9x < 3x
    rows[1]['speedup'] = 3.1
    assert gpu_check.bench_targets_met(gpu_check.summarize_bench(rows))
    steps = {'cuda_tests': dict(figures=dict(passed=10, failures=0, errors=0, skipped=0),
                                target_met=True),
             'bench_ops': dict(figures=gpu_check.summarize_bench(rows)),
             'throughput': dict(figures=dict(xs_over_swin_t=1.5), target_met=False)}
    met = [t['met'] for t in gpu_check.target_lines(steps, dry_run=False)]
    assert met == [True, True, True, False]
    assert [t['met'] for t in gpu_check.target_lines(steps, dry_run=True)][1:] == [None] * 3


def test_junit_counts_of_the_cuda_test_run(tmp_path):
    # The format pytest --junitxml writes, as the GPU run reads it.
    xml = tmp_path / 'r.xml'
    xml.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
                   'errors="1" failures="2" skipped="3" tests="10" time="1.0"></testsuite>'
                   '</testsuites>')
    assert gpu_check._junit_counts(str(xml)) == dict(tests=10, failures=2, errors=1, skipped=3,
                                                     passed=4)


def test_build_env_builds_for_the_visible_gpu_only():
    env = gpu_check.build_ext_env({'TORCH_CUDA_ARCH_LIST': '7.5;8.0', 'PATH': '/bin'})
    assert 'TORCH_CUDA_ARCH_LIST' not in env and env['DUALFORMER_CUDA'] == '1'
