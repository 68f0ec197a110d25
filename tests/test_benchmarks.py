# Copyright (c) dualformer-mm contributors.
"""The backbone benchmarks of tools/benchmarks run and write well-formed outputs.

``throughput.py`` (the speed comparison of the paper's Table 6, section 4.4),
``resolution_scaling.py`` (cost against input size, the linear-complexity claim of section
3.2) and ``bench_ops.py`` (the fused partition ops against their reference) run as
subprocesses at tiny settings; the tests check the JSON fields, that the numbers
are positive and the PNGs exist, and the errors for bad requests. No timing is asserted:
the scripts print ratios for people to read, and a shared CI machine makes any threshold
flaky.
"""
import json
import math
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PYTHON = sys.executable
THROUGHPUT = 'tools/benchmarks/throughput.py'
SCALING = 'tools/benchmarks/resolution_scaling.py'
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


def test_throughput_writes_json_and_png(tmp_path: Path):
    out_json, out_png = tmp_path / 'tp.json', tmp_path / 'tp.png'
    result = _run([THROUGHPUT, '--models', 'dualformer-t', 'swin-t', '--batch', '2',
                   '--size', '64', '--json', str(out_json), '--png', str(out_png)] + TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'img/s' in result.stdout and 'dualformer-t' in result.stdout
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
    _check_environment(data['environment'])
    assert out_png.stat().st_size > 0


def test_resolution_scaling_writes_json_and_png(tmp_path: Path):
    out_json, out_png = tmp_path / 'rs.json', tmp_path / 'rs.png'
    # Given largest first and non-square: the script sorts by pixels, growth is from 64x64.
    result = _run([SCALING, '--models', 'dualformer-t', 'swin-t', '--sizes', '64x96',
                   '64x64', '--json', str(out_json), '--png', str(out_png)] + TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'peak MiB' in result.stdout
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
    assert first['time_exponent'] is None and isinstance(second['time_exponent'], float)
    _check_environment(data['environment'])
    assert out_png.stat().st_size > 0


def test_unknown_model_lists_accepted_names():
    result = _run([THROUGHPUT, '--models', 'dualformer-t', 'resnet-50'])
    assert result.returncode == 2
    assert "argument --models: invalid choice: 'resnet-50'" in result.stderr
    for name in ('dualformer-xs', 'swin-t', 'convnext-t', 'pvtv2-b2'):
        assert name in result.stderr


def test_bad_size_names_the_format():
    result = _run([SCALING, '--sizes', '800'])
    assert result.returncode == 2
    assert 'argument --sizes' in result.stderr and 'HEIGHTxWIDTH' in result.stderr


def test_missing_toolbox_names_model_and_package(tmp_path: Path):
    # A stand-in mmdet that fails to import, first on the path, plays an uninstalled mmdet.
    (tmp_path / 'mmdet').mkdir()
    (tmp_path / 'mmdet' / '__init__.py').write_text("raise ImportError('no mmdet here')\n")
    result = _run([THROUGHPUT, '--models', 'pvtv2-b1'] + TINY, PYTHONPATH=str(tmp_path))
    assert result.returncode == 2
    assert "model 'pvtv2-b1' needs the mmdet package" in result.stderr
    assert 'pip install mmdet' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error without CUDA')
def test_cuda_without_gpu_is_a_clear_error():
    # Both scripts validate --device in _common.settings_from_args; one covers it.
    result = _run([SCALING, '--device', 'cuda'])
    assert result.returncode == 2
    assert 'argument --device: cuda was requested' in result.stderr
    assert 'Traceback' not in result.stderr


def test_bench_ops_json_rows():
    # Both shapes, every op, with the forward/backward split; one timed call each.
    result = _run(['tools/benchmarks/bench_ops.py', '--repeat', '1', '--threads', '1',
                   '--split', '--json'])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout[result.stdout.index('['):])
    ops = {(r['op'], r['shape']) for r in rows}
    for shape in ('224x224 b32', '800x1280 b1'):
        for op in ('lsh_hash', 'partition_softmax_pool', 'partition_mean',
                   'partition_distribute', 'pipeline', 'mhpa',
                   'partition_distribute:forward', 'partition_distribute:backward',
                   'partition_mean:backward', 'partition_softmax_pool:forward'):
            assert (op, shape) in ops, (op, shape)
    for r in rows:
        assert set(r) == {'op', 'shape', 'device', 'reference_ms', 'ext_ms', 'speedup'}
        assert r['device'] == 'cpu'
        assert _positive(r['reference_ms']) and _positive(r['ext_ms'])
        assert r['speedup'] == pytest.approx(r['reference_ms'] / r['ext_ms'])
