# Copyright (c) dualformer-mm contributors.
"""tools/deployment/benchmark_deploy.py and dualformer_mm.benchmark.deployed, without the models.

The whole models (Mask R-CNN at 800x1333, UperNet at 512x512) take minutes to export on 2 cores;
their export and parity are ``tests/test_mmdeploy.py``'s. Here the command line's errors, the
checks that keep a broken export from being timed, and the timing and table code run on tiny
stand-in convolutions exported to ONNX. No timing is asserted: the script prints ratios to read.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dualformer_mm.benchmark import deployed
from dualformer_mm.benchmark.deployed import Deployed
from tests.utils import ROOT, load_script

pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (requirements/tests.txt)')
SCRIPT = 'tools/deployment/benchmark_deploy.py'


@pytest.fixture(scope='module')
def script():
    return load_script(SCRIPT)


# --- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize('argv,message', [
    (['--tasks', 'classifier'], r"--tasks: invalid choice: 'classifier' \(choose from "
                                r"'detector', 'segmentor'\)"),
    (['--threads', '0'], r'--threads: must be >= 1, got 0'),
    (['--threads', '1', 'two'], r"--threads: expected an integer, got 'two'"),
    (['--repeat', '0'], r'--repeat: must be >= 1, got 0'),
    (['--warmup', '-1'], r'--warmup: must be >= 0, got -1'),
    (['--models', 'resnet-50'], r"--models: invalid choice: 'resnet-50' \(choose from "
                                r"'dualformer-s', 'dualformer-t', 'swin-t'\)"),
    (['--models', 'dualformer-s'], r"--models: must include 'swin-t'"),
    (['--tasks', 'segmentor', '--models', 'dualformer-t', 'swin-t'],
     r"--models: no model of task 'segmentor' besides 'swin-t' \(it has \['dualformer-s', "
     r"'swin-t'\]\)"),
], ids=['tasks', 'threads', 'threads-type', 'repeat', 'warmup', 'models', 'no-reference',
        'nothing-to-compare'])
def test_bad_arguments_name_the_argument_and_the_accepted_values(script, capsys, argv,
                                                                 message):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_work_dir_that_is_a_file_is_refused(script, capsys, tmp_path):
    path = tmp_path / 'a_file'
    path.write_text('')
    with pytest.raises(SystemExit):
        script.parse_args(['--work-dir', str(path)])
    assert f"argument --work-dir: must be a directory (or not exist yet), '{path}' is a file" \
        in capsys.readouterr().err


def test_defaults_are_the_documented_run(script):
    args = script.parse_args([])
    assert args.tasks == ['detector', 'segmentor']
    assert args.models == ['dualformer-s', 'dualformer-t', 'swin-t']
    assert (args.threads, args.warmup, args.repeat) == ([1, 2], 1, 5)
    assert script.parse_args(['--threads', '2', '1', '2']).threads == [2, 1]


def test_tasks_name_the_configs_and_sizes_of_the_docs():
    det, seg = deployed.TASKS['detector'], deployed.TASKS['segmentor']
    assert (det.size, seg.size) == ((800, 1333), (512, 512))
    assert sorted(det.models) == ['dualformer-s', 'dualformer-t', 'swin-t']
    assert sorted(seg.models) == ['dualformer-s', 'swin-t']
    for task in (det, seg):
        assert os.path.isfile(task.deploy)
        for config in task.models.values():
            assert os.path.isfile(deployed.resolve_config(config)), config


# --- the checks before timing ----------------------------------------------------------------


def test_detection_check_matches_by_class_and_box():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30]], dtype=float)
    scores, labels = np.array([0.9, 0.8, 0.7]), np.array([1, 2, 3])
    same = deployed.check_detections(boxes, scores, labels, boxes[::-1], labels[::-1])
    assert same == dict(eager=3, onnxruntime=3, matched=3, passed=True)
    # Another class, or a box moved off its place, is not a match.
    other = deployed.check_detections(boxes, scores, labels, boxes + [[0, 0, 0, 0], [15, 15,
                                      15, 15], [0, 0, 0, 0]], np.array([1, 2, 4]))
    assert other['matched'] == 1 and not other['passed']
    assert not deployed.check_detections(boxes, scores, labels, boxes[:0], labels[:0])['passed']
    # Nothing detected on either side times a detector whose mask head never ran: refused.
    empty = deployed.check_detections(boxes[:0], scores[:0], labels[:0], boxes[:0], labels[:0])
    assert not empty['passed']


def test_label_check():
    ref = np.zeros((1, 10, 10), dtype=np.int64)
    got = ref[None].copy()  # (1, 1, H, W), as the ONNX output
    assert deployed.check_labels(ref, got) == dict(label_agreement=1.0, passed=True)
    got[..., 0, :2] = 5  # 2% of the pixels
    assert deployed.check_labels(ref, got) == dict(label_agreement=0.98, passed=False)
    assert not deployed.check_labels(ref, got[..., :5])['passed']


# --- timing and the table on stand-ins -------------------------------------------------------


class _Counted:
    """An eager stand-in that counts its calls and the threads PyTorch had for each."""

    def __init__(self, module: nn.Module, x: torch.Tensor) -> None:
        self.module, self.x, self.threads = module, x, []

    def __call__(self):
        self.threads.append(torch.get_num_threads())
        with torch.no_grad():
            return self.module(self.x)


class _Recorded(Deployed):
    """A :class:`Deployed` whose sessions record their thread counts."""

    def session(self, threads: int):
        self.sessions = getattr(self, 'sessions', []) + [threads]
        return super().session(threads)


class _Postprocess:
    """A stand-in of mmdeploy's post-processing that records what it was given."""

    def __init__(self) -> None:
        self.shapes = []

    def __call__(self, outputs):
        self.shapes.append([o.shape for o in outputs])
        return outputs


def _stand_in(tmp_path, task: str, name: str, channels: int, passed: bool = True,
              postprocess: bool = True):
    from dualformer_mm.deployment import export
    from dualformer_mm.deployment.onnx_export import INPUT_NAME
    module = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU()).eval()
    x = torch.rand(1, 3, 16, 24)
    path = str(tmp_path / f'{task}_{name}.onnx')
    export(module, x, path, ['output'], exporter='torchscript')
    return _Recorded(task, name, (16, 24), path, _Counted(module, x), {INPUT_NAME: x.numpy()},
                     dict(passed=passed), _Postprocess() if postprocess else None)


def test_time_deployed_interleaves_the_runtimes_per_thread_count(tmp_path):
    models = [_stand_in(tmp_path, 'toy', 'dualformer-s', 8),
              _stand_in(tmp_path, 'toy', 'swin-t', 4, postprocess=False),
              _stand_in(tmp_path, 'toy', 'broken', 4, passed=False)]
    threads = torch.get_num_threads()
    rows = deployed.time_deployed(models, [1, 2], warmup=1, repeat=3)
    assert torch.get_num_threads() == threads  # restored
    assert [(r['model'], r['threads']) for r in rows] == [
        (m, n) for n in (1, 2) for m in ('dualformer-s', 'swin-t', 'broken')]
    for row in rows:
        assert row['task'] == 'toy' and row['size'] == [16, 24]
        assert len(row['pytorch_samples_ms']) == 3 and row['pytorch_ms'] > 0
        assert row['pytorch_ms'] == pytest.approx(float(np.median(row['pytorch_samples_ms'])))
        if row['model'] == 'broken':  # its check failed: ONNX Runtime is not timed
            assert row['onnxruntime_ms'] is None and row['onnxruntime_samples_ms'] == []
        else:
            assert len(row['onnxruntime_samples_ms']) == 3 and row['onnxruntime_ms'] > 0
        if row['model'] == 'dualformer-s':  # the session, then the post-processing
            assert len(row['mmdeploy_samples_ms']) == 3 and row['mmdeploy_ms'] > 0
        else:
            assert row['mmdeploy_ms'] is None and row['mmdeploy_samples_ms'] == []
    for m in models:  # warm-up and rounds, with the thread count of their pass
        assert m.eager.threads == [1] * 4 + [2] * 4
    # The post-processing got the session's outputs, in each call of both passes.
    assert models[0].postprocess.shapes == [[(1, 8, 16, 24)]] * 8
    assert models[2].postprocess.shapes == []
    assert [m.sessions for m in models[:2]] == [[1, 2], [1, 2]]
    assert not hasattr(models[2], 'sessions')


def test_table_divides_by_swin_t_of_the_same_task_and_threads():
    rows = [dict(task='detector', size=[800, 1344], model='dualformer-t', threads=1,
                 pytorch_ms=3000.0, onnxruntime_ms=1500.0, mmdeploy_ms=2000.0),
            dict(task='detector', size=[800, 1344], model='swin-t', threads=1,
                 pytorch_ms=4000.0, onnxruntime_ms=2000.0, mmdeploy_ms=2500.0),
            dict(task='detector', size=[800, 1344], model='dualformer-t', threads=2,
                 pytorch_ms=2000.0, onnxruntime_ms=None, mmdeploy_ms=None),
            dict(task='detector', size=[800, 1344], model='swin-t', threads=2,
                 pytorch_ms=1000.0, onnxruntime_ms=800.0, mmdeploy_ms=900.0)]
    lines = deployed.format_table(rows).splitlines()
    assert lines[0] == ('| task | input | model | threads | PyTorch eager (ms) | ONNX Runtime '
                        '(ms) | mmdeploy model (ms) | ORT speed-up | mmdeploy speed-up | '
                        'PyTorch / Swin-T | ORT / Swin-T | mmdeploy / Swin-T |')
    assert lines[1].count('|---') == lines[0].count(' | ') + 1
    assert lines[2] == ('| detector | 800x1344 | dualformer-t | 1 | 3000.0 | 1500.0 | 2000.0 | '
                        '2.00x | 1.50x | 0.75 | 0.75 | 0.80 |')
    assert lines[3].endswith('| 4000.0 | 2000.0 | 2500.0 | 2.00x | 1.60x | 1.00 | 1.00 | 1.00 |')
    assert lines[4] == ('| detector | 800x1344 | dualformer-t | 2 | 2000.0 | n/a | n/a | n/a | '
                        'n/a | 2.00 | n/a | n/a |')


def test_main_prints_the_table_and_writes_json(script, monkeypatch, tmp_path, capsys):
    stand_ins = {(task, name): _stand_in(tmp_path, task, name, c)
                 for task in ('detector', 'segmentor')
                 for name, c in (('dualformer-t', 4), ('dualformer-s', 8), ('swin-t', 6))}
    prepared = []

    def prepare(task, model, work_dir, reuse=False):
        prepared.append((task, model, reuse))
        stand_ins[task, model].check = dict(matched=3, passed=True)
        return stand_ins[task, model]

    monkeypatch.setattr(script, 'prepare', prepare)
    out = tmp_path / 'deploy.json'
    argv = ['--threads', '1', '--repeat', '2', '--warmup', '0', '--work-dir',
            str(tmp_path / 'w'), '--json', str(out), '--reuse']
    assert script.main(argv) == 0
    # The segmentor task has no DualFormer-T.
    assert prepared == [('detector', 'dualformer-t', True), ('detector', 'dualformer-s', True),
                        ('detector', 'swin-t', True), ('segmentor', 'dualformer-s', True),
                        ('segmentor', 'swin-t', True)]
    printed = capsys.readouterr().out
    assert 'dualformer-s detector (16x24), onnxruntime against eager: matched 3: passed' \
        in printed
    table = [line for line in printed.splitlines() if line.startswith('| ')]
    assert len(table) == 1 + 5 and all(line.endswith('| 1.00 | 1.00 | 1.00 |')
                                       for line in table if '| swin-t |' in line)
    data = json.loads(out.read_text())
    assert data['benchmark'] == 'deploy' and len(data['results']) == 5
    env = data['environment']
    assert env['threads'] == [1] and env['settings']['repeat'] == 2
    assert set(env['load_average']) == {'start', 'end'} and len(env['load_average']['end']) == 3
    for package in ('onnxruntime', 'onnx', 'mmdeploy', 'mmdet', 'mmsegmentation'):
        assert env['packages'][package], package
    assert env['command'].startswith('python tools/deployment/benchmark_deploy.py --threads 1')


def test_module_imports_without_onnx_mmdeploy_or_the_toolboxes():
    code = 'import dualformer_mm.benchmark.deployed, sys; print(sorted(sys.modules))'
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = set(eval(run.stdout.strip().splitlines()[-1]))
    assert 'dualformer_mm.benchmark.deployed' in loaded
    heavy = {'onnx', 'onnxruntime', 'mmdeploy', 'mmdet', 'mmseg', 'skimage'}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_docstring_examples():
    import doctest
    result = doctest.testmod(deployed)
    assert result.attempted and not result.failed
