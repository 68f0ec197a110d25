"""Reliability: a training run killed with SIGKILL resumes exactly; seeded runs repeat."""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from dualformer_mm.demo import make_demo_datasets

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

CONFIG = """
_base_ = ['{root}/configs/demo/cls_dualformer_t_demo.py']
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{data}'))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='{data}'))
test_dataloader = val_dataloader
max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs + 1)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=-1))
randomness = dict(seed=0, deterministic=True)
"""


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    """A 4-epoch classifier run on 10 synthetic images, with random crops and flips."""
    tmp = tmp_path_factory.mktemp('resume')
    make_demo_datasets(str(tmp / 'data'), seed=0, scale=0.02)
    path = tmp / 'cls_resume.py'
    path.write_text(CONFIG.format(root=ROOT, data=tmp / 'data' / 'cls'))
    return str(path)


def train(config, work_dir, *extra):
    """Start tools/train.py in a new process."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, 'tools/train.py', config, '--work-dir',
                             str(work_dir), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_weights(work_dir):
    """The model weights of the last epoch's checkpoint."""
    return torch.load(osp.join(work_dir, 'epoch_4.pth'), map_location='cpu')['state_dict']


def test_sigkill_then_resume_matches_uninterrupted_run(config, tmp_path):
    full = train(config, tmp_path / 'full')
    log = full.communicate(timeout=600)[0]
    assert full.returncode == 0, log[-3000:]

    killed = train(config, tmp_path / 'killed')
    last = tmp_path / 'killed' / 'last_checkpoint'
    deadline = time.time() + 600
    # Kill as soon as epoch 2's checkpoint is complete (mmengine writes last_checkpoint after it).
    while not (last.exists() and last.read_text().strip().endswith('epoch_2.pth')):
        assert killed.poll() is None and time.time() < deadline, 'the run ended before the kill'
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / 'killed' / 'epoch_4.pth').exists(), 'killed too late to test resume'

    resumed = train(config, tmp_path / 'killed', '--resume')
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert 'restored the Python, numpy and torch random states' in log
    assert 'Epoch(train) [1]' not in log.split('Load checkpoint')[-1]  # no epoch repeated
    expected, got = final_weights(tmp_path / 'full'), final_weights(tmp_path / 'killed')
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_same_seed_same_losses(config, tmp_path):
    logs = []
    for run in ('a', 'b'):
        proc = train(config, tmp_path / run, '--cfg-options', 'train_cfg.max_epochs=1')
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
        logs.append([line.split('loss: ')[1] for line in out.splitlines()
                     if 'Epoch(train)' in line and 'loss: ' in line])
    assert len(logs[0]) >= 5 and logs[0] == logs[1]


def dist_train(config, work_dir, *extra):
    """tools/dist_train.sh with 2 CPU (gloo) processes; returns the combined log."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT=str(port))
    result = subprocess.run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir',
                             str(work_dir), *extra], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


@pytest.mark.timeout(1500)
def test_two_process_resume_restores_each_ranks_random_state(config, tmp_path):
    """A 2-process run resumed after epoch 1 ends like the uninterrupted run, per rank RNG."""
    # diff_rank_seed: the ranks draw different crops and flips, so restoring rank 0's states
    # on rank 1 would change what rank 1 trains on.
    options = ['--cfg-options', 'train_cfg.max_epochs=2', 'randomness.diff_rank_seed=True',
               'train_dataloader.batch_size=1']
    dist_train(config, tmp_path / 'full', *options)
    full = tmp_path / 'full'
    saved = torch.load(full / 'epoch_1.pth', map_location='cpu')
    assert len(saved['meta']['random_state_per_rank']) == 2

    log = dist_train(config, tmp_path / 'resumed', '--resume', str(full / 'epoch_1.pth'),
                     *options)
    # Only rank 0 logs to the console; the weights below show what rank 1 restored.
    assert 'restored the Python, numpy and torch random states of rank 0' in log
    expected = torch.load(full / 'epoch_2.pth', map_location='cpu')['state_dict']
    got = torch.load(tmp_path / 'resumed' / 'epoch_2.pth', map_location='cpu')['state_dict']
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    # The control: the same checkpoint with rank 0's states only, as before the hook saved
    # every rank's, resumes into other weights (so the comparison above can fail).
    del saved['meta']['random_state_per_rank']
    torch.save(saved, tmp_path / 'rank0_only.pth')
    log = dist_train(config, tmp_path / 'rank0', '--resume', str(tmp_path / 'rank0_only.pth'),
                     *options)
    assert "every rank restores rank 0's" in log
    other = torch.load(tmp_path / 'rank0' / 'epoch_2.pth', map_location='cpu')['state_dict']
    assert any(not torch.equal(expected[k], other[k]) for k in expected)
