"""tools/gpu_check.sh without a GPU: its one-line refusal, the runner and the report on
fabricated step results, each step's own work (its command, what it reads back, when it
fails) with the heavy part faked or on small inputs, the pieces the GPU run relies on (the
``cuda`` marker, the bandwidth arithmetic of bench_ops, the target judgements, the report's
last line on whether to set ``DUALFORMER_OPS=ext``, the tier-2 configs and the predict hook),
and one real ``--dry-run`` (``slow``) of every step that can run on the CPU.

The real dry run leaves out ``train_det`` and ``train_seg``: the detection and segmentation
configs train through tools/train.py in tests/test_tools.py, and ``train_cls`` runs the same
step function (tested for ``det`` here with its training faked) for real.

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

from tests.utils import load_package, load_script

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')

MODULES = ('bench_ops_dry', 'common', 'predict_hook', 'report', 'run', 'tier1', 'tier1_bench',
           'tier1_kernels', 'tier2', 'tier2_config')
# The package as tools/gpu_check.sh's `python -m gpu_check` imports it.
load_package('tools/gpu_check')
gpu_check = types.SimpleNamespace(
    **{name: importlib.import_module(f'gpu_check.{name}') for name in MODULES})


def _script(*args, timeout=300):
    # The children take this process's thread count: under xdist, the worker's share of the
    # cores (conftest.py).
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(['bash', osp.join(ROOT, 'tools', 'gpu_check.sh'), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _context(tmp_path, dry_run=True, **kwargs):
    """The context the dry run (or, with ``dry_run=False``, a one-GPU run) gives each step."""
    return gpu_check.common.Context(dry_run=dry_run, out=str(tmp_path),
                                    device='cpu' if dry_run else 'cuda',
                                    num_gpus=0 if dry_run else 1, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal without a GPU')
def test_without_gpu_exits_2_with_one_line(tmp_path, capsys):
    assert gpu_check.run.main(['--out', str(tmp_path / 'r')]) == 2
    out = capsys.readouterr()
    assert out.out == ''
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and 'no CUDA GPU is visible' in lines[0] and '--dry-run' in lines[0]
    assert not (tmp_path / 'r').exists()


# --- the runner and the report, with fabricated step results -------------------------------

def _fake_steps(monkeypatch, results=None):
    """Replace the child process of each step by a result: ``results[name]``, else a pass."""
    ran = []

    def run_step_in_child(step, ctx, argv_extra):
        ran.append((step.name, argv_extra))
        return copy.deepcopy((results or {}).get(step.name)) or gpu_check.common.result(
            'pass', dict(step=step.name))

    monkeypatch.setattr(gpu_check.run, 'run_step_in_child', run_step_in_child)
    return ran


def _report(out):
    with open(out / 'report.json') as f:
        return json.load(f), (out / 'report.md').read_text()


def test_dry_run_runs_the_steps_in_order_and_reports(tmp_path, monkeypatch, capsys):
    ran = _fake_steps(monkeypatch)
    assert gpu_check.run.main(['--dry-run', '--out', str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    report, md = _report(tmp_path)
    assert report['mode'].startswith('dry run')
    steps = {s['name']: s for s in report['steps']}
    assert list(steps) == gpu_check.run.STEP_NAMES
    # What needs CUDA is skipped with the reason, before any child starts; the rest run as
    # children of the dry run, in order.
    skipped = {'build_ext': 'skipped: needs CUDA', 'dist_train_det': 'skipped: needs 2+ CUDA GPUs'}
    stack = all(importlib.util.find_spec(n) for n in ('mmpretrain', 'mmdet', 'mmseg'))
    if not stack:
        skipped.update({n: steps[n]['status'] for n in ('train_cls', 'train_det', 'train_seg')})
        assert all(s.startswith('skipped: needs') for s in skipped.values()), skipped
    assert ran == [(n, ['--dry-run']) for n in gpu_check.run.STEP_NAMES if n not in skipped]
    for name, step in steps.items():
        assert step['status'] == skipped.get(name, 'pass'), name
        if name not in skipped:
            assert step['figures'] == dict(step=name)
        assert f'| {name} | {step["tier"]} | {step["status"]} |' in md
    # No target is judged on a CPU, and the verdict, which a dry run cannot give, ends both.
    assert md.count('| not judged |') == len(report['targets']) == 4
    assert '## Failures' not in md
    line = report['kernels']['line']
    assert report['kernels']['opt_in'] is None and 'dry run' in line
    assert md.rstrip('\n').splitlines()[-1] == line
    lines = stdout.rstrip('\n').splitlines()
    assert 'no step failed' in lines[-2] and lines[-1] == f'[gpu_check] {line}'


def test_a_failed_step_fails_the_run(tmp_path, monkeypatch, capsys):
    failure = gpu_check.common.result('fail', details='gradient of x differs')
    _fake_steps(monkeypatch, dict(train_step=failure))
    assert gpu_check.run.main(['--dry-run', '--out', str(tmp_path)]) == 1
    assert 'FAILED: train_step' in capsys.readouterr().out
    _, md = _report(tmp_path)
    failures = md[md.index('## Failures'):]
    assert '### train_step' in failures and 'gradient of x differs' in failures


def test_steps_and_tier_select_what_runs(tmp_path, monkeypatch):
    ran = _fake_steps(monkeypatch)
    assert gpu_check.run.main(['--dry-run', '--out', str(tmp_path / 'a'), '--tier', '1']) == 0
    steps = {s['name']: s['status'] for s in _report(tmp_path / 'a')[0]['steps']}
    tier2 = [s.name for s in gpu_check.run.STEPS if s.tier == 2]
    assert tier2 == ['train_cls', 'train_det', 'train_seg', 'dist_train_det']
    assert all(steps[n] == 'skipped: not selected (--tier 1)' for n in tier2)
    assert [n for n, _ in ran] == ['environment', 'cuda_tests', 'train_step', 'bench_ops',
                                   'throughput']
    ran.clear()
    assert gpu_check.run.main(['--dry-run', '--out', str(tmp_path / 'b'), '--steps',
                               'bench_ops', 'build_ext']) == 0
    steps = {s['name']: s['status'] for s in _report(tmp_path / 'b')[0]['steps']}
    assert ran == [('bench_ops', ['--dry-run'])] and steps['build_ext'] == 'skipped: needs CUDA'
    assert all(v == 'skipped: not selected (--steps)' for n, v in steps.items()
               if n not in ('bench_ops', 'build_ext'))


# A stand-in for the interpreter that runs a step: what it does is read from the environment
# the runner passes on.
FAKE_PYTHON = """#!{python}
import json, sys, time, os
args = sys.argv[1:]
behaviour = os.environ['GPU_CHECK_TEST_STEP']
if behaviour == 'pass':
    with open(args[args.index('--result') + 1], 'w') as f:
        json.dump(dict(status='pass', figures=dict(argv=args), details='', target_met=None), f)
elif behaviour == 'crash':
    print('the step broke here')
    sys.exit(3)
else:
    print('started', flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize('behaviour', ['pass', 'crash', 'hang'])
def test_each_step_runs_in_a_child_process(behaviour, tmp_path, monkeypatch):
    python = tmp_path / 'python'
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    monkeypatch.setenv('GPU_CHECK_TEST_STEP', behaviour)
    ctx = _context(tmp_path / 'out', python=str(python))
    step = gpu_check.common.Step('train_step', 1, 'title', None, timeout=3)
    res = gpu_check.run.run_step_in_child(step, ctx, ['--dry-run'])
    if behaviour == 'pass':
        # The child is this package run as a module, told its step, result file and options.
        assert res['status'] == 'pass' and res['figures']['argv'] == [
            '-m', 'gpu_check', '--run-step', 'train_step', '--result',
            str(tmp_path / 'out' / 'logs' / 'train_step.result.json'), '--out',
            str(tmp_path / 'out'), '--dry-run']
    elif behaviour == 'crash':
        assert res['status'] == 'fail'
        assert res['details'].startswith('the step process ended with rc 3')
        assert 'the step broke here' in res['details']
    else:
        assert res['status'] == 'fail' and res['details'].startswith('timed out after 3 s')
        assert 'started' in res['details'] and res['seconds'] >= 3


def test_a_step_that_raises_is_reported_as_failed(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError('CUDA error: an illegal memory access')

    steps = list(gpu_check.run.STEPS)
    steps[gpu_check.run.STEP_NAMES.index('bench_ops')] = gpu_check.common.Step(
        'bench_ops', 1, 'title', broken, 1)
    monkeypatch.setattr(gpu_check.run, 'STEPS', steps)
    path = tmp_path / 'result.json'
    assert gpu_check.run.child_main('bench_ops', str(path), _context(tmp_path)) == 0
    res = json.loads(path.read_text())
    assert res['status'] == 'fail'
    assert res['details'].startswith('RuntimeError: CUDA error: an illegal memory access')


# --- tier 1 steps ---------------------------------------------------------------------------

def test_environment_step_records_the_versions(tmp_path):
    import importlib.metadata
    import platform
    res = gpu_check.tier1.step_environment(_context(tmp_path))
    figures = res['figures']
    assert res['status'] == 'pass'
    assert (figures['python'], figures['torch']) == (platform.python_version(),
                                                      torch.__version__)
    assert figures['gpus'] == [] if not torch.cuda.is_available() else figures['gpus']
    for name, dist in (('mmengine', 'mmengine'), ('mmdet', 'mmdet'),
                       ('mmseg', 'mmsegmentation')):
        if importlib.util.find_spec(name):
            assert figures[name] == f'{dist} {importlib.metadata.version(dist)}'
    assert figures['mmcv_ops'] in ('none (mmcv-lite)', 'CPU only') or \
        figures['mmcv_ops'].startswith('CUDA ')


def test_cuda_tests_step_collects_exactly_the_cuda_cases(tmp_path):
    # The dry run collects `pytest -m cuda` over the files with CUDA cases (the GPU run runs
    # them): every case it selects is a CUDA case, and the CPU cases are deselected.
    from tests.utils import CUDA, DEVICES
    assert [m.name for m in CUDA.marks] == ['cuda', 'skipif'] and CUDA in DEVICES
    ctx = _context(tmp_path)
    res = gpu_check.tier1.step_cuda_tests(ctx)
    assert res['status'] == 'skipped: needs CUDA', res['details']
    files = res['figures']['files']
    assert 'tests/test_partition_ops.py' in files and 'tests/test_tools.py' not in files
    assert files == gpu_check.tier1.cuda_test_files()
    log = (tmp_path / 'logs' / 'cuda_tests.log').read_text()
    ids = [line for line in log.splitlines() if '::' in line]
    assert len(ids) == res['figures']['collected'] > 0
    assert all('cuda' in i.split('[', 1)[1].rstrip(']').split('-') for i in ids)
    assert {i.split('::')[0] for i in ids} <= set(files)
    assert re.search(rf'{len(ids)}/\d+ tests collected \(\d+ deselected\)', log)


def test_cuda_tests_step_fails_when_nothing_is_collected(tmp_path, monkeypatch):
    def run_logged(cmd, log, timeout, env=None):
        with open(log, 'a') as f:
            f.write('ERROR tests/test_partition_ops.py - ImportError\n')
        return subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(gpu_check.tier1, 'run_logged', run_logged)
    res = gpu_check.tier1.step_cuda_tests(_context(tmp_path))
    assert res['status'] == 'fail' and res['figures']['collected'] == 0
    assert 'collection failed' in res['details'] and 'ImportError' in res['details']


def test_grad_difference_judges_each_parameter_against_the_whole():
    kernels = gpu_check.tier1_kernels
    ref = {'weight': torch.tensor([3.0, 4.0]), 'bias': torch.tensor([1e-9])}
    same = kernels.grad_difference(ref, {k: v.clone() for k, v in ref.items()})
    assert (same['max_rel'], same['total_rel'], same['finite']) == (0.0, 0.0, True)
    ext = {'weight': torch.tensor([3.5, 4.0]), 'bias': torch.tensor([1e-6])}
    diff = kernels.grad_difference(ref, ext)
    # |0.5| / |(3, 4)| = 0.1; the bias's 1e-6 is judged against 1e-3 x 5 (the whole), not
    # against its own 1e-9.
    assert diff['max_rel'] == pytest.approx(0.1) and diff['max_rel_param'] == 'weight'
    assert diff['total_rel'] == pytest.approx(math.hypot(0.5, 1e-6 - 1e-9) / 5)
    ext['bias'] = torch.tensor([float('nan')])
    nan = kernels.grad_difference(ref, ext)
    assert nan['max_rel_param'] == 'bias' and math.isnan(nan['max_rel']) and not nan['finite']


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_train_step_case_compares_the_kernels_with_the_reference(precision):
    # What the train_step step computes per norm and precision, on a smaller model and input
    # (fp16 autocast on a CPU is emulated and slow: the dry run covers it).
    from dualformer_mm import DualFormer
    from tests.utils import TINY_ARCH
    torch.manual_seed(0)
    model = DualFormer(arch=TINY_ARCH, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    case = gpu_check.tier1_kernels.train_step_case(model, x, precision, 'cpu')
    assert case['ext_op_calls'] > 0 and case['reference_op_calls'] == 0
    assert case['finite'] and case['missing_grads'] == []
    assert case['max_rel'] <= gpu_check.tier1_kernels.GRAD_RTOL[precision]
    assert case['loss_ext'] == pytest.approx(case['loss_reference'], rel=0.05)


def test_train_step_step_fails_on_any_bad_case(tmp_path, monkeypatch):
    kernels = gpu_check.tier1_kernels
    good = dict(loss_reference=1.0, loss_ext=1.0, ext_op_calls=12, reference_op_calls=0,
                missing_grads=[], max_rel=1e-5, max_rel_param='w', total_rel=1e-6, finite=True)
    bad = {
        ('GN', 'fp16'): dict(good, max_rel=0.5, max_rel_param='stages.0.blocks.0.attn.qkv'),
        ('BN', 'fp32'): dict(good, ext_op_calls=0),
        ('BN', 'bf16'): dict(good, loss_ext=float('nan')),
        ('GN', 'fp32'): dict(good, missing_grads=['stem.0.conv.weight']),
    }
    cases = {}

    def train_step_case(model, x, precision, device):
        norm = 'GN' if any(isinstance(m, torch.nn.GroupNorm) for m in model.modules()) else 'BN'
        cases[norm, precision] = tuple(x.shape)
        if (norm, precision) == ('BN', 'fp16'):
            raise RuntimeError('an error in one case')
        return dict(bad.get((norm, precision), good))

    monkeypatch.setattr(kernels, 'train_step_case', train_step_case)
    res = kernels.step_train_step(_context(tmp_path))
    # Every case runs, at the dry run's size, whatever failed before it.
    assert cases == {(n, p): (2, 3, 64, 64) for n in ('BN', 'GN') for p in ('fp32', 'fp16', 'bf16')}
    figures = res['figures']
    assert res['status'] == 'fail' and figures['arch'] == kernels.DRY_ARCH
    assert figures['cuda_kernels_verified'] is False  # what `auto` runs on CUDA, recorded
    assert figures['BN_fp16'] == dict(error='RuntimeError: an error in one case')
    assert figures['GN_bf16'] == good
    problems = res['details'].splitlines()
    assert problems == [
        'BN_fp32: the fused run called 0 dualformer kernels, the reference run 0',
        'BN_fp16: RuntimeError: an error in one case',
        'BN_bf16: non-finite loss or gradient',
        "GN_fp32: no gradient for ['stem.0.conv.weight']",
        'GN_fp16: gradient of stages.0.blocks.0.attn.qkv differs by 5.00e-01 (tolerance 2e-02)']
    bad.clear()
    monkeypatch.setattr(kernels, 'train_step_case', lambda *a: dict(good))
    assert kernels.step_train_step(_context(tmp_path))['status'] == 'pass'


def _bench_rows():
    rows = [dict(op=op, shape=shape, device='cpu', reference_ms=2.0, ext_ms=1.0, speedup=2.0)
            for op in ('pipeline', 'mhpa') for shape in gpu_check.bench_ops_dry.DRY_SHAPES]
    rows += [dict(op='partition_softmax_pool:bandwidth', shape=shape, fraction=0.5, op_gbps=5.0,
                  copy_gbps=10.0, op_bytes=100 * (i + 1))
             for i, shape in enumerate(gpu_check.bench_ops_dry.DRY_SHAPES)]
    return rows


@pytest.mark.parametrize('dry_run', [True, False])
def test_bench_ops_step_runs_the_script_and_reads_its_rows(dry_run, tmp_path, monkeypatch):
    calls = []

    def run(cmd, cwd, stdout, stderr, timeout, text, env):
        calls.append((cmd, env['PYTHONPATH'].split(os.pathsep)[:2]))
        stdout.write('building ...\n' + json.dumps(_bench_rows()))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(gpu_check.tier1_bench.subprocess, 'run', run)
    res = gpu_check.tier1_bench.step_bench_ops(_context(tmp_path, dry_run))
    (cmd, path), = calls
    # The gpu_check package and the checkout; the dry run at its small shapes.
    assert path == [TOOLS, ROOT]
    if dry_run:
        assert cmd[1:3] == ['-m', 'gpu_check.bench_ops_dry'] and '--bandwidth' in cmd
        assert res['target_met'] is None  # not judged on a CPU
    else:
        assert cmd[1] == osp.join(gpu_check.tier1_bench.BENCHMARKS, 'bench_ops.py')
        assert cmd[cmd.index('--device') + 1] == 'cuda'
        assert res['target_met'] is False  # a 2x pipeline is below the 3x target
    assert res['status'] == 'pass'
    assert res['figures'] == gpu_check.tier1_bench.summarize_bench(_bench_rows())
    assert set(res['figures']['bandwidth']) == set(gpu_check.bench_ops_dry.DRY_SHAPES)


@pytest.mark.parametrize('dry_run', [True, False])
def test_throughput_step_measures_the_kernels(dry_run, tmp_path, monkeypatch):
    seen = {}
    ratio = 1.8

    def run_logged(cmd, log, timeout, env=None):
        seen.update(cmd=cmd, ops=env['DUALFORMER_OPS'])
        models = cmd[cmd.index('--models') + 1:cmd.index('--device')]
        rows = [dict(model=m, img_per_s=10.0 * (ratio if m == 'dualformer-xs' else 1),
                     ratio_to_swin_t=ratio if m == 'dualformer-xs' else 1.0,
                     error='out of memory' if m == 'convnext-t' else None) for m in models]
        with open(cmd[cmd.index('--json') + 1], 'w') as f:
            json.dump(dict(rows=rows, environment=dict(
                dualformer_ops=dict(mode='ext', extension=True, kernels=True))), f)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(gpu_check.tier1_bench, 'run_logged', run_logged)
    res = gpu_check.tier1_bench.step_throughput(_context(tmp_path, dry_run))
    cmd, figures = seen['cmd'], res['figures']
    # The targets are about the kernels: the step runs them whatever `auto` would pick.
    assert seen['ops'] == 'ext' and '--amp' in cmd
    assert figures['dualformer_ops'] == dict(mode='ext', extension=True, kernels=True)
    assert figures['xs_over_swin_t'] == figures['dualformer-xs']['ratio_to_swin_t'] == ratio
    if dry_run:
        assert tuple(cmd[cmd.index('--models') + 1:cmd.index('--device')]) == \
            gpu_check.tier1_bench.THROUGHPUT_DRY_MODELS
        assert cmd[cmd.index('--device') + 1] == 'cpu' and cmd[cmd.index('--size') + 1] == '64'
        assert res['status'] == 'pass' and res['target_met'] is None
    else:
        assert cmd[cmd.index('--size') + 1] == '224'
        # A model that failed fails the step; the ratio is still judged (1.8x >= 1.7x).
        assert res['status'] == 'fail' and "['convnext-t']" in res['details']
        assert figures['convnext-t'] == dict(error='out of memory') and res['target_met'] is True


# --- tier 2 steps -----------------------------------------------------------------------------

@pytest.mark.parametrize('outcome', ['pass', 'rc', 'nan', 'no_predict'])
def test_train_task_step_reads_the_log_and_the_prediction(outcome, tmp_path, monkeypatch):
    """``train_det`` around its training run (which tests/test_tools.py runs for real): the
    config it hands tools/train.py, and what it makes of the log and the predict summary."""
    mkdtemp = gpu_check.tier2.tempfile.mkdtemp
    monkeypatch.setattr(gpu_check.tier2.tempfile, 'mkdtemp',
                        lambda suffix=None, prefix=None, dir=None: mkdtemp(
                            suffix, prefix, dir or str(tmp_path)))
    seen = {}
    prediction = dict(samples=[dict(boxes=3, has_masks=True)] * 2, world_size=1, device='cpu')

    def run_train_py(config, options):
        from mmengine.config import Config
        cfg = Config.fromfile(config, import_custom_modules=False)
        seen.update(options=options, config=cfg)
        work_dir = osp.join(options[options.index('--work-dir') + 1], '20250101_000000')
        os.makedirs(work_dir)
        loss = 'nan' if outcome == 'nan' else '2.5063'
        with open(osp.join(work_dir, '20250101_000000.log'), 'w') as f:
            f.write(f'Epoch(train) [1][1/1]  lr: 2.0000e-07  loss: {loss}  loss_cls: 1.1\n')
        if outcome != 'no_predict':
            with open(cfg.custom_hooks[-1].out, 'w') as f:
                json.dump(prediction, f)
        return 1 if outcome == 'rc' else 0

    monkeypatch.setattr(gpu_check.tier2, 'run_train_py', run_train_py)
    res = gpu_check.tier2.step_train_task('det')(_context(tmp_path / 'out'))
    cfg, figures = seen['config'], res['figures']
    # One process on the dry run: no --amp, plain BN where the config has SyncBN.
    assert seen['options'][0] == '--work-dir'
    text = json.dumps(cfg.model.to_dict())
    assert '"SyncBN"' not in text and '"BN"' in text
    replaced = json.dumps(_real_config('det').model.to_dict()).count('"SyncBN"')
    assert figures['norm'] == f'BN ({replaced} SyncBN replaced)' and replaced > 0
    assert (figures['processes'], figures['amp'], figures['config']) == (
        1, False, 'configs/mmdet/mask_rcnn_dualformer_s_1x.py')
    # Two generated images, the tier-2 config's data root.
    assert len(os.listdir(cfg.train_dataloader.dataset.data_root + 'train2017')) == 2
    if outcome == 'pass':
        assert res['status'] == 'pass' and figures['loss'] == '2.5063'
        assert figures['predict'] == prediction
        assert (tmp_path / 'out' / 'logs' / 'train_det.mmengine.log').exists()
    else:
        assert res['status'] == 'fail'
        assert res['details'].startswith({'rc': 'training failed (rc 1)',
                                          'nan': 'no finite loss in the log',
                                          'no_predict': 'no predict summary written'}[outcome])


def test_bandwidth_fraction_arithmetic():
    bench_ops = _load_bench_ops()
    # 300 bytes in 2 ms against a copy moving 400 bytes in 2 ms: 75% of its bandwidth.
    assert bench_ops.bandwidth_fraction(300, 2.0, 400, 2.0) == pytest.approx(0.75)
    assert bench_ops.bandwidth_fraction(400, 1.0, 400, 2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match='must be > 0'):
        bench_ops.bandwidth_fraction(300, 0.0, 400, 2.0)
    assert doctest.testmod(bench_ops).failed == 0


def _load_bench_ops():
    return load_script('tools/benchmarks/bench_ops.py')


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


# --- the real dry run -------------------------------------------------------------------------

# Every step the dry run can run, but the detection and segmentation training (see above).
REAL_STEPS = [n for n in gpu_check.run.STEP_NAMES if n not in ('train_det', 'train_seg')]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dry_run_of_the_script(tmp_path):
    proc = _script('--dry-run', '--out', str(tmp_path), '--steps', *REAL_STEPS, timeout=2300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report, md = _report(tmp_path)
    steps = {s['name']: s for s in report['steps']}
    assert list(steps) == gpu_check.run.STEP_NAMES
    expected = dict(build_ext='skipped: needs CUDA', cuda_tests='skipped: needs CUDA',
                    dist_train_det='skipped: needs 2+ CUDA GPUs',
                    train_det='skipped: not selected (--steps)',
                    train_seg='skipped: not selected (--steps)')
    stack = all(importlib.util.find_spec(n) for n in ('mmpretrain', 'mmdet', 'mmseg'))
    for name, step in steps.items():
        if name == 'train_cls' and not stack:
            assert step['status'].startswith('skipped: needs'), step
        else:
            assert step['status'] == expected.get(name, 'pass'), (name, step['details'][-2000:])
    # The predict hook ran in the training process, on the trained classifier.
    if stack:
        figures = steps['train_cls']['figures']
        assert figures['norm'].startswith('BN (') and math.isfinite(float(figures['loss']))
        predict = figures['predict']
        assert predict['device'] == 'cpu' and predict['world_size'] == 1
        assert predict['samples'] == [dict(num_scores=1000, scores_finite=True)] * 2
    line = report['kernels']['line']
    assert md.rstrip('\n').splitlines()[-1] == line and 'dry run' in line
    assert proc.stdout.rstrip('\n').splitlines()[-1] == f'[gpu_check] {line}'
