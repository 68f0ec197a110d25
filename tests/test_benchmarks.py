# Copyright (c) dualformer-mm contributors.
"""The backbone benchmarks of tools/benchmarks run and write well-formed outputs.

``throughput.py`` (the speed comparison of the paper's Table 6, section 4.4),
``resolution_scaling.py`` (cost against input size, the linear-complexity claim of section
3.2) and ``bench_ops.py`` (the fused partition ops against their reference) run their
``main()`` in this process at tiny settings; ``train_step.py`` (training steps of the backbones
and of their Mask R-CNNs) runs as a subprocess (``slow``), and so does a script on a machine
without the toolboxes. The tests check the JSON fields, that the numbers are positive and the
ratios are to the same run's Swin-T, that the PNGs exist, and the errors for bad requests. The
shared pieces of the ``dualformer_mm.benchmark`` package they import (where a peer comes
from, mmpretrain or timm; the memory held between steps; the training step of
``train_step.py`` and its fp16 GradScaler) are tested in-process. No timing is asserted: the
scripts print ratios for people to read, and a shared CI machine makes any threshold flaky.
"""
import doctest
import importlib.util
import json
import math
import os
import os.path as osp
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from dualformer_mm.benchmark import (detectors, errors, measure, options, output, ratios,
                                     timm_features, training, zoo)
from tests.utils import load_package, load_script

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PYTHON = sys.executable
THROUGHPUT = 'tools/benchmarks/throughput.py'
# Small enough for seconds on 2 cores; 64 px still gives Swin-T (with pad_small_map) and
# DualFormer a 2x2 map at stride 32.
TINY = ['--warmup', '0', '--repeat', '1', '--threads', '1']


def _run(args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON] + args, cwd=ROOT, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_environment(env: dict) -> None:
    for key in ('date', 'torch', 'cpu_model', 'threads', 'device', 'settings', 'packages'):
        assert key in env, key
    assert env['device'] == 'cpu' and env['threads'] == 1
    assert env['settings']['repeat'] == 1
    # What ran: on CPU, auto and ext take the kernels wherever they are built.
    ops_env = env['dualformer_ops']
    assert ops_env['kernels'] == (ops_env['extension'] and ops_env['mode'] != 'reference')


@pytest.fixture
def script(monkeypatch):
    """Run a script's ``main(argv)`` in this process as its command line would, returning its
    exit status; the thread count it sets is put back afterwards."""
    threads = torch.get_num_threads()

    def run(name, argv):
        module = load_script(f'tools/benchmarks/{name}.py')
        monkeypatch.setattr(sys, 'argv', [f'{name}.py', *argv])
        with pytest.raises(SystemExit) as exit_info:
            errors.run_main(lambda: module.main(argv))
        return exit_info.value.code

    yield run
    torch.set_num_threads(threads)


def test_throughput_writes_json_and_png(script, tmp_path: Path, capsys):
    out_json, out_png = tmp_path / 'tp.json', tmp_path / 'tp.png'
    code = script('throughput', ['--models', 'dualformer-t', 'swin-t', '--batch', '2',
                                 '--size', '64', '--json', str(out_json), '--png', str(out_png)]
                  + TINY)
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert 'img/s' in stdout and 'dualformer-t' in stdout
    data = json.loads(out_json.read_text())
    assert data['benchmark'] == 'throughput' and data['batch'] == 2 and data['size'] == 64
    rows = {r['model']: r for r in data['rows']}
    assert list(rows) == ['dualformer-t', 'swin-t']
    for row in rows.values():
        assert row['error'] is None
        for key in ('params_m', 'ms_per_batch', 'img_per_s', 'ratio_to_swin_t'):
            assert _positive(row[key]), (row['model'], key, row[key])
        assert len(row['times_s']) == 1
    assert rows['swin-t']['ratio_to_swin_t'] == pytest.approx(1.0)
    dual = rows['dualformer-t']
    assert dual['ratio_to_swin_t'] == pytest.approx(dual['img_per_s'] / rows['swin-t']['img_per_s'])
    assert dual['img_per_s'] == pytest.approx(2 / (dual['ms_per_batch'] / 1e3))
    # Where each model came from is printed and recorded (mmpretrain here; timm without it).
    assert '  swin-t: mmpretrain 1.2.0' in stdout
    assert rows['swin-t']['implementation'] == 'mmpretrain 1.2.0'
    assert dual['implementation'].startswith('dualformer_mm ')
    _check_environment(data['environment'])
    assert out_png.stat().st_size > 0
    _assert_no_targets(stdout, data)


def _assert_no_targets(stdout: str, data: dict) -> None:
    """The scripts print ratios to Swin-T and judge none of them."""
    assert not [line for line in stdout.splitlines() if line.startswith('target')], stdout
    assert 'targets' not in data


def test_resolution_scaling_writes_json_and_png(script, tmp_path: Path, capsys):
    out_json, out_png = tmp_path / 'rs.json', tmp_path / 'rs.png'
    # Given largest first and non-square: the script sorts by pixels, growth is from 64x64.
    code = script('resolution_scaling', ['--models', 'dualformer-t', 'swin-t', '--sizes',
                                         '64x96', '64x64', '--json', str(out_json), '--png',
                                         str(out_png)] + TINY)
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert 'peak MiB' in stdout
    data = json.loads(out_json.read_text())
    assert data['benchmark'] == 'resolution_scaling' and data['sizes'] == ['64x64', '64x96']
    rows = data['rows']
    assert [(r['model'], r['width']) for r in rows] == [
        ('dualformer-t', 64), ('dualformer-t', 96), ('swin-t', 64), ('swin-t', 96)]
    for row in rows:
        assert row['error'] is None and row['pixels'] == row['height'] * row['width']
        for key in ('params_m', 'ms', 'peak_mib', 'ms_ratio_to_swin_t',
                    'time_ratio_over_pixel_ratio'):
            assert _positive(row[key]), (row['model'], key, row[key])
    first, second = rows[0], rows[1]
    assert first['time_ratio_over_pixel_ratio'] == pytest.approx(1.0)
    # 1.5x the pixels: the ratio is the time's growth over the pixels'.
    assert second['time_ratio_over_pixel_ratio'] == pytest.approx(
        second['ms'] / first['ms'] / 1.5)
    assert first['time_exponent'] is None and isinstance(second['time_exponent'], float)
    _assert_no_targets(stdout, data)
    _check_environment(data['environment'])
    assert out_png.stat().st_size > 0


@pytest.mark.parametrize('name, args, message', [
    ('throughput', ['--models', 'dualformer-t', 'resnet-50'],
     "argument --models: invalid choice: 'resnet-50'"),
    ('resolution_scaling', ['--sizes', '800'], 'argument --sizes'),
    ('resolution_scaling', ['--device', 'cuda'], 'argument --device: cuda was requested'),
])
def test_bad_arguments_are_named(script, capsys, name, args, message):
    if '--device' in args and torch.cuda.is_available():
        pytest.skip('checks the error without CUDA')
    assert script(name, args) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err
    if '--models' in args:
        for model in ('dualformer-xs', 'swin-t', 'convnext-t', 'pvtv2-b2'):
            assert model in err
    if '--sizes' in args:
        assert 'HEIGHTxWIDTH' in err


def test_missing_toolbox_names_model_and_package(script, monkeypatch, capsys):
    # None in sys.modules makes the import fail, as for an uninstalled mmdet.
    for name in ('mmdet', 'mmdet.models', 'mmdet.registry'):
        monkeypatch.setitem(sys.modules, name, None)
    assert script('throughput', ['--models', 'pvtv2-b1'] + TINY) == 2
    err = capsys.readouterr().err
    assert "throughput.py: error: model 'pvtv2-b1' needs the mmdet package" in err
    assert 'pip install mmdet' in err


def test_bench_ops_json_rows(script, monkeypatch, capsys):
    # bench_ops.py's own main() at the GPU check's dry-run shapes (its default shapes, on
    # which the numbers are quoted, take minutes on a CPU); every op, with the
    # forward/backward split and the bandwidth rows; one timed call each.
    bench_ops = load_script('tools/benchmarks/bench_ops.py')
    assert list(bench_ops.SHAPES) == ['224x224 b32', '800x1280 b1']
    load_package('tools/gpu_check')
    from gpu_check.bench_ops_dry import DRY_SHAPES
    monkeypatch.setattr(bench_ops, 'SHAPES', dict(DRY_SHAPES))
    monkeypatch.setattr(bench_ops, 'BANDWIDTH_SHAPES', dict(DRY_SHAPES))
    monkeypatch.setattr(sys, 'argv', ['bench_ops.py', '--repeat', '1', '--threads', '1',
                                      '--split', '--bandwidth', '--json'])
    threads = torch.get_num_threads()
    try:
        bench_ops.main()
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    rows = json.loads(stdout[stdout.index('['):])
    ops = {(r['op'], r['shape']) for r in rows}
    for shape in DRY_SHAPES:
        for op in ('lsh_hash', 'partition_softmax_pool', 'partition_mean',
                   'partition_distribute', 'pipeline', 'mhpa',
                   'partition_distribute:forward', 'partition_distribute:backward',
                   'partition_mean:backward', 'partition_softmax_pool:forward',
                   'partition_softmax_pool:bandwidth'):
            assert (op, shape) in ops, (op, shape)
    for r in rows:
        assert r['device'] == 'cpu'
        if r['op'].endswith(':bandwidth'):
            assert 0 < r['fraction'] == pytest.approx(r['op_gbps'] / r['copy_gbps'])
            continue
        assert set(r) == {'op', 'shape', 'device', 'reference_ms', 'ext_ms', 'speedup'}
        assert _positive(r['reference_ms']) and _positive(r['ext_ms'])
        assert r['speedup'] == pytest.approx(r['reference_ms'] / r['ext_ms'])


# --- training benchmark (train_step.py) and dualformer_mm.benchmark, in-process -------------

TRAIN_STEP = 'tools/benchmarks/train_step.py'


@pytest.fixture
def bench():
    """The modules of dualformer_mm.benchmark and two scripts of tools/benchmarks."""
    return types.SimpleNamespace(
        detectors=detectors, errors=errors, measure=measure, options=options, output=output,
        ratios=ratios, timm_features=timm_features, training=training, zoo=zoo,
        scaling=load_script('tools/benchmarks/resolution_scaling.py'),
        train_step=load_script('tools/benchmarks/train_step.py'))


@pytest.mark.slow
def test_train_step_writes_both_parts(tmp_path: Path):
    out_json, out_png = tmp_path / 'train.json', tmp_path / 'train.png'
    # The default detector models (DualFormer-S and Swin-T Mask R-CNNs from their configs) at
    # a small image with few RoIs (the mask head's cost grows with them).
    result = _run([TRAIN_STEP, '--models', 'dualformer-s', 'swin-t', '--batch', '2', '--size',
                   '32', '--det-size', '64x96', '--det-rois', '16', '--json', str(out_json),
                   '--png', str(out_png)] + TINY)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    assert 'training step at 32x32, batch 2' in out
    assert "Mask R-CNN training iteration at 64x96 (padded to 64x96), batch 2" in out
    assert "16 RoIs per image (not the configs' 512)" in out
    assert 'swin-t: mmpretrain 1.2.0' in out
    data = json.loads(out_json.read_text())
    _assert_no_targets(out, data)
    assert data['benchmark'] == 'train_step' and data['parts'] == ['backbone', 'detector']
    _check_environment(data['environment'])

    part = data['backbone']
    assert (part['batch'], part['size'], part['num_classes']) == (2, 32, 1000)
    rows = {r['model']: r for r in part['rows']}
    assert list(rows) == ['dualformer-s', 'swin-t']
    assert rows['dualformer-s']['implementation'].startswith('dualformer_mm')
    for row in rows.values():
        assert row['error'] is None and len(row['times_s']) == 1
        for key in ('params_m', 'ms_per_step', 'img_per_s', 'state_mib', 'step_peak_mib'):
            assert _positive(row[key]), (row['model'], key, row[key])
        assert row['img_per_s'] == pytest.approx(2 / (row['ms_per_step'] / 1e3))
        assert row['peak_mib'] == pytest.approx(row['state_mib'] + row['step_peak_mib'])
        assert math.isfinite(row['loss']) and row['skipped_steps'] == 0
    # The state holds AdamW's two moments besides the weights: over 3x the fp32 parameters.
    assert rows['swin-t']['state_mib'] > 3 * rows['swin-t']['params_m'] * 1e6 * 4 / 2**20
    dual, swin = rows['dualformer-s'], rows['swin-t']
    assert swin['ratio_to_swin_t'] == 1.0 and swin['memory_ratio_to_swin_t'] == 1.0
    assert dual['ratio_to_swin_t'] == pytest.approx(dual['img_per_s'] / swin['img_per_s'])
    assert dual['memory_ratio_to_swin_t'] == pytest.approx(dual['peak_mib'] / swin['peak_mib'])

    part = data['detector']
    assert (part['batch'], part['height'], part['width']) == (2, 64, 96)
    assert (part['instances_per_image'], part['rois_per_image']) == (7, 16)
    rows = {r['model']: r for r in part['rows']}
    assert list(rows) == ['dualformer-s', 'swin-t']
    assert rows['dualformer-s']['config'] == 'configs/mmdet/mask_rcnn_dualformer_s_1x.py'
    assert rows['swin-t']['config'] == 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
    for row in rows.values():
        assert row['error'] is None and row['backbone_error'] is None
        assert row['padded'] == [64, 96] and row['rois_per_image'] == 16
        for key in ('params_m', 'backbone_params_m', 'ms_per_iter', 'backbone_ms',
                    'img_per_s', 'state_mib', 'step_peak_mib'):
            assert _positive(row[key]), (row['model'], key, row[key])
        assert row['params_m'] > row['backbone_params_m']
        assert row['backbone_share'] == pytest.approx(row['backbone_ms'] / row['ms_per_iter'])
        assert math.isfinite(row['loss']) and row['loss'] > 0
    dual, swin = rows['dualformer-s'], rows['swin-t']
    # The backbones of the detectors are those of the backbone part.
    assert dual['backbone_params_m'] == pytest.approx(data['backbone']['rows'][0]['params_m'])
    assert swin['ratio_to_swin_t'] == 1.0
    assert dual['ratio_to_swin_t'] == pytest.approx(dual['img_per_s'] / swin['img_per_s'])
    assert out_png.stat().st_size > 0


@pytest.mark.parametrize('args, message', [
    (['--parts', 'detector', '--compile'], 'argument --compile: applies to the backbone part'),
    (['--channels-last'], 'argument --channels-last: applies to the backbone part'),
    (['--amp'], 'argument --amp/--amp-dtype: the detector part cannot run under autocast on CPU'),
    (['--parts', 'head'], "argument --parts: invalid choice: 'head'"),
    (['--det-models', 'resnet-50'], "argument --det-models: invalid choice: 'resnet-50'"),
    (['--det-size', '800'], 'argument --det-size: expected HEIGHTxWIDTH'),
    (['--det-rois', '0'], 'argument --det-rois: must be >= 1'),
    (['--peer-source', 'hub'], "argument --peer-source: invalid choice: 'hub'"),
])
def test_train_step_argument_errors(bench, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.train_step.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_step_detector_without_mmdet_names_it(bench, monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmdet', None)
    with pytest.raises(bench.errors.BenchmarkError,
                       match=r'the detector part needs mmdet.*--parts backbone'):
        bench.detectors.check_detector_requirements()


def test_peers_without_toolboxes_or_timm_name_both(tmp_path: Path):
    # The scripts import without mmpretrain, mmdet and timm (as on a machine with torch and
    # this package only); a peer then needs one of its two implementations.
    for package in ('mmpretrain', 'mmdet', 'timm'):
        (tmp_path / package).mkdir()
        (tmp_path / package / '__init__.py').write_text(f"raise ImportError('no {package}')\n")
    # The stand-ins first; the rest of the path as it was (it may hold the checkout).
    result = _run([THROUGHPUT, '--models', 'dualformer-t', 'swin-t'] + TINY,
                  PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    assert result.returncode == 2
    assert "model 'swin-t' needs the mmpretrain package or timm" in result.stderr
    assert 'pip install mmpretrain==1.2.0' in result.stderr and 'pip install timm' in result.stderr
    assert 'Traceback' not in result.stderr


class _FakeTimmFeatures(torch.nn.Module):
    """Stands in for timm's features_only Swin: four (N, H, W, C) maps."""

    class _Info:
        def channels(self):
            return [8, 16, 32, 64]

    def __init__(self):
        super().__init__()
        self.feature_info = self._Info()
        self.proj = torch.nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x):
        x = self.proj(x)
        outs = []
        for c in self.feature_info.channels():
            outs.append(x.repeat(1, c // 8, 1, 1).permute(0, 2, 3, 1) * 3 + 1)
            x = x[:, :, ::2, ::2]
        return outs


@pytest.fixture
def fake_timm(monkeypatch):
    """A timm module recording its create_model calls."""
    # Imported first, as in a user's process: with a timm already imported, importing
    # dualformer_mm registers its models in that timm, which a stand-in cannot take.
    import dualformer_mm  # noqa: F401
    calls = []
    module = types.ModuleType('timm')
    module.__version__ = '9.9.9'

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return _FakeTimmFeatures()

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, 'timm', module)
    return calls


def _hide_mmpretrain(monkeypatch):
    # None in sys.modules makes `import mmpretrain.models` raise ImportError, even in a
    # process that imported it already.
    for name in ('mmpretrain', 'mmpretrain.models', 'mmpretrain.registry'):
        monkeypatch.setitem(sys.modules, name, None)


def test_peer_source_selection(bench, monkeypatch, fake_timm):
    zoo, error = bench.zoo, bench.errors.BenchmarkError
    # With mmpretrain importable, auto takes it and timm only when asked for.
    assert zoo.resolve_source('swin-t').package == 'mmpretrain'
    assert zoo.resolve_source('convnext-t', 'toolbox').package == 'mmpretrain'
    forced = zoo.resolve_source('swin-t', 'timm')
    assert (forced.package, forced.version) == ('timm', '9.9.9')
    # DualFormer (like PVTv2) has one implementation, whatever the peer source.
    assert zoo.resolve_source('dualformer-t', 'timm').package == 'dualformer_mm'

    _hide_mmpretrain(monkeypatch)
    source = zoo.resolve_source('swin-t')
    assert source.package == 'timm' and 'mmpretrain cannot be imported' in source.describe()
    with pytest.raises(error, match="'swin-t' needs the mmpretrain package,"):
        zoo.resolve_source('swin-t', 'toolbox')
    monkeypatch.setitem(sys.modules, 'timm', None)
    with pytest.raises(error, match='needs the mmpretrain package or timm'):
        zoo.resolve_source('convnext-t')
    with pytest.raises(error, match='--peer-source timm'):
        zoo.resolve_source('convnext-t', 'timm')


def test_timm_swin_is_built_as_the_toolbox_contract(bench, monkeypatch, fake_timm):
    zoo = bench.zoo
    _hide_mmpretrain(monkeypatch)
    model = zoo.build_model('swin-t', image_size=(62, 64))
    # Built for the run's size, padded up to the patch size as mmpretrain's Swin pads.
    assert fake_timm == [('swin_tiny_patch4_window7_224',
                          dict(pretrained=False, features_only=True, out_indices=(0, 1, 2, 3),
                               img_size=(64, 64)))]
    assert not model.training
    outs = model(torch.rand(2, 3, 62, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4),
                                              (2, 64, 2, 2)]
    for out in outs:
        # (N, C, H, W), contiguous, each through a LayerNorm over C (what timm lacks).
        assert out.is_contiguous()
        assert torch.allclose(out.mean(1), torch.zeros(()), atol=1e-5)
    zoo.build_model('swin-t')
    assert fake_timm[1][1]['strict_img_size'] is False and 'img_size' not in fake_timm[1][1]


def test_timm_fallback_in_fp16_training_benchmark(bench, monkeypatch, fake_timm, capsys):
    # The GPU check's path (timm peers, fp16 autocast with a GradScaler), on CPU.
    _hide_mmpretrain(monkeypatch)
    rows = bench.train_step.measure_backbones(['swin-t'], batch=2, size=32,
                                              settings=_settings(bench, 'cpu', 'fp16'))
    assert 'swin-t: timm 9.9.9 (mmpretrain cannot be imported' in capsys.readouterr().out
    (row, ) = rows
    assert row['implementation'].startswith('timm 9.9.9') and row['error'] is None
    assert row['ratio_to_swin_t'] == 1.0 and _positive(row['peak_mib'])
    assert math.isfinite(row['loss']) and row['skipped_steps'] == 0


@pytest.mark.skipif(importlib.util.find_spec('timm') is None, reason='timm is not installed')
def test_real_timm_peers_match_mmpretrain(bench):
    zoo = bench.zoo
    x = torch.rand(1, 3, 64, 96)
    for name in ('swin-t', 'convnext-t'):
        timm_model = zoo.build_model(name, zoo.resolve_source(name, 'timm'))
        mm_model = zoo.build_model(name, zoo.resolve_source(name, 'toolbox'))
        assert [o.shape for o in timm_model(x)] == [o.shape for o in mm_model(x)]
        assert zoo.count_params(timm_model) == pytest.approx(
            zoo.count_params(mm_model), rel=0.01)


def test_peers_build_in_their_toolbox_whatever_the_default_scope(bench):
    """mmengine builds from the registry of the current default scope: a scope that a runner
    of another toolbox left in the process (mmdet's, whose Swin takes no ``arch``) must not
    change which Swin-T is benchmarked."""
    pytest.importorskip('mmdet')
    pytest.importorskip('mmpretrain')
    from mmengine.registry import DefaultScope
    import mmdet.models  # noqa: F401  (mmdet's SwinTransformer in mmdet's registry)
    zoo = bench.zoo
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = zoo.build_model('swin-t', zoo.resolve_source('swin-t', 'toolbox'))
    assert type(model).__module__.startswith('mmpretrain.')
    assert [o.shape[1] for o in model(torch.rand(1, 3, 64, 64))] == [96, 192, 384, 768]


def _settings(bench, device='cpu', amp_dtype=None):
    return bench.options.Settings(device=device, threads=1, amp=amp_dtype is not None,
                           amp_dtype=amp_dtype, channels_last=False, compile=False, warmup=0,
                           repeat=1, iters=1)


def test_grad_scaler_only_for_fp16(bench):
    train_step = bench.training
    assert train_step.needs_grad_scaler(_settings(bench, 'cuda', 'fp16'))
    assert train_step.needs_grad_scaler(_settings(bench, 'cpu', 'fp16'))
    assert not train_step.needs_grad_scaler(_settings(bench, 'cuda', 'bf16'))
    assert not train_step.needs_grad_scaler(_settings(bench, 'cuda'))
    net = torch.nn.Linear(4, 3)
    step = train_step.TrainStep(lambda: net(torch.ones(2, 4)).sum(),
                                torch.optim.AdamW(net.parameters()),
                                _settings(bench, 'cpu', 'bf16'))
    assert step.scaler is None and step.settle() == 0 and step.skipped_steps() == 0


def test_fp16_train_step_settles_and_counts_skips(bench):
    train_step = bench.training
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x, scale = torch.randn(4, 8), {'loss': 1.0}
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    step = train_step.TrainStep(lambda: net(x).float().square().mean() * scale['loss'],
                                optimizer, _settings(bench, 'cpu', 'fp16'))
    assert isinstance(step.scaler, torch.amp.GradScaler)
    # 2**16 times a loss of 2**10 overflows fp16 (max 65504): the scaler halves its scale
    # until it does not, skipping those steps, and then takes a real one.
    scale['loss'] = 2.0**10
    weight = net[0].weight.detach().clone()
    ran = step.settle()
    assert ran > 1 and step.scaler.get_scale() < train_step.GRAD_SCALER_INIT
    assert step.skipped_steps() == 0 and not torch.equal(weight, net[0].weight)
    assert all(p.grad is None for p in net.parameters())  # zero_grad(set_to_none=True)
    # An overflow after settling is a skipped step: weights unchanged, and counted.
    scale['loss'] = math.inf
    weight = net[0].weight.detach().clone()
    step()
    assert step.skipped_steps() == 1 and torch.equal(weight, net[0].weight)


def test_memory_state_counts_each_storage_once(bench):
    measure = bench.measure
    net = torch.nn.Linear(256, 1024)  # 1 MiB of weight, 4 KiB of bias
    optimizer = torch.optim.AdamW(net.parameters())
    before = measure.state_mib(measure.training_state(net, optimizer))
    net(torch.ones(1, 256)).sum().backward()
    optimizer.step()
    after = measure.state_mib(measure.training_state(net, optimizer, [net.weight]))
    assert before == pytest.approx((256 * 1024 + 1024) * 4 / 2**20)
    # Two AdamW moments per parameter (and a step counter each); the weight counted once.
    assert after == pytest.approx(3 * before, rel=0.01)


def test_docstring_examples(bench):
    for module in (bench.errors, bench.zoo, bench.options, bench.measure, bench.ratios,
                   bench.detectors, bench.training):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_train_step_defaults_match_the_docs(bench, monkeypatch):
    # docs/benchmarks.md (Training) states these defaults; the configs' own values with them.
    from mmengine.config import Config
    train_step = bench.train_step
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: None)  # parse_args applies it
    args = train_step.parse_args([])
    assert args.parts == ['backbone', 'detector'] and args.models == list(train_step.MODEL_ZOO)
    assert (args.batch, args.size, args.settings.warmup, args.settings.repeat) == (16, 224, 1, 3)
    assert not args.settings.amp and args.settings.peer_source == 'auto'
    assert args.det_models == ['dualformer-s', 'swin-t'] and args.det_rois is None
    assert (args.det_batch, args.det_size) == (2, (800, 1333))
    assert detectors.INSTANCES_PER_IMAGE == 7 and train_step.NUM_CLASSES == 1000
    for name in args.det_models:
        cfg = Config.fromfile(detectors.config_path(name, root=ROOT))
        sampler = cfg.model.train_cfg.rcnn.sampler
        assert (sampler.num, sampler.pos_fraction) == (512, 0.25)
        assert cfg.model.data_preprocessor.pad_size_divisor == 32
        assert cfg.model.roi_head.mask_head.num_convs == 4
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
