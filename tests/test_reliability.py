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
