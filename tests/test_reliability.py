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
# Stochastic depth draws from the main process's torch generator, so the hook matters.
model = dict(backbone=dict(drop_path_rate=0.1))
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
    """A 4-epoch classifier run on synthetic images, with random crops and flips."""
    tmp = tmp_path_factory.mktemp('resume')
    make_demo_datasets(str(tmp / 'data'), seed=0, scale=0.02)
    path = tmp / 'cls_resume.py'
    path.write_text(CONFIG.format(root=ROOT, data=tmp / 'data' / 'cls'))
    return str(path)


def train(config, work_dir, *extra, env=None):
    """Start tools/train.py in a new process (``env``: extra environment variables)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.Popen([sys.executable, 'tools/train.py', config, '--work-dir',
                             str(work_dir), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_weights(work_dir, epoch=4):
    """The model weights of the checkpoint of ``epoch`` (the config's last)."""
    return torch.load(osp.join(work_dir, f'epoch_{epoch}.pth'), map_location='cpu')['state_dict']


def losses(log):
    """The loss of every logged training iteration, as printed."""
    return [line.split('loss: ')[1] for line in log.splitlines()
            if 'Epoch(train)' in line and 'loss: ' in line]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(config, tmp_path):
    """A run killed after epoch 2 and resumed ends with the uninterrupted run's weights; until
    the kill, the two runs of the same seed logged the same losses."""
    full = train(config, tmp_path / 'full')
    full_log = full.communicate(timeout=600)[0]
    assert full.returncode == 0, full_log[-3000:]

    killed = train(config, tmp_path / 'killed')
    last = tmp_path / 'killed' / 'last_checkpoint'
    deadline = time.time() + 600
    # Kill as soon as epoch 2's checkpoint is complete (mmengine writes last_checkpoint after it).
    while not (last.exists() and last.read_text().strip().endswith('epoch_2.pth')):
        assert killed.poll() is None and time.time() < deadline, 'the run ended before the kill'
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed_log = killed.communicate()[0]
    assert not (tmp_path / 'killed' / 'epoch_4.pth').exists(), 'killed too late to test resume'
    # Same seed, same losses: every iteration the killed run logged, the full run logged alike.
    before_kill = losses(killed_log)
    assert len(before_kill) >= 10 and before_kill == losses(full_log)[:len(before_kill)]

    resumed = train(config, tmp_path / 'killed', '--resume')
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert 'restored the Python, numpy and torch random states' in log
    assert 'Epoch(train) [1]' not in log.split('Load checkpoint')[-1]  # no epoch repeated
    expected, got = final_weights(tmp_path / 'full'), final_weights(tmp_path / 'killed')
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


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


@pytest.mark.xdist_group('processes')
@pytest.mark.slow
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


# Records a digest of every training batch's images (after the random crops and flips).
DIGEST_HOOK = """
import hashlib
import json
import os.path as osp

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class BatchDigestHook(Hook):
    def before_train_iter(self, runner, batch_idx, data_batch=None):
        digest = hashlib.sha256()
        for image in data_batch['inputs']:
            digest.update(image.numpy().tobytes())
        with open(osp.join(runner.work_dir, 'batches.jsonl'), 'a') as f:
            f.write(json.dumps([runner.epoch, batch_idx, digest.hexdigest()]) + '\\n')
"""

WORKERS = """
_base_ = ['{config}']
custom_imports = dict(imports=['dualformer_mm', 'batch_digest'], allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook'), dict(type='BatchDigestHook')]
train_dataloader = dict(num_workers=2, persistent_workers=True)
val_dataloader = dict(num_workers=2, persistent_workers=True)
test_dataloader = val_dataloader
# Validation after every epoch, so that a resumed run validates in epochs where the
# interrupted one did not start a new validation iterator. Three epochs: a run resumed after
# the first keeps its workers for two.
train_cfg = dict(max_epochs=3, val_interval=1)
"""


def batch_digests(work_dir):
    """{epoch: [digest of each batch]} from BatchDigestHook's file."""
    import json
    epochs = {}
    for line in (work_dir / 'batches.jsonl').read_text().splitlines():
        epoch, _, digest = json.loads(line)
        epochs.setdefault(epoch, []).append(digest)
    return epochs


@pytest.mark.xdist_group('processes')
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_resume_with_persistent_workers_loads_the_same_batches(config, tmp_path):
    """2 persistent workers: a run resumed after epoch 1 trains its two epochs on the
    uninterrupted run's augmented batches and ends with its weights; with mmengine's loop (the
    control) it does not.
    """
    (tmp_path / 'batch_digest.py').write_text(DIGEST_HOOK)
    workers = tmp_path / 'cls_workers.py'
    workers.write_text(WORKERS.format(config=config))
    env = dict(PYTHONPATH=str(tmp_path))

    def run(work_dir, *extra):
        proc = train(str(workers), tmp_path / work_dir, *extra, env=env)
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, log[-3000:]
        return log

    results = {}
    for loop in ('SeededEpochBasedTrainLoop', 'EpochBasedTrainLoop'):
        options = ['--cfg-options', f'train_cfg.type={loop}']
        full_log = run(f'{loop}-full', *options)
        resumed_log = run(f'{loop}-resumed', '--resume',
                          str(tmp_path / f'{loop}-full' / 'epoch_1.pth'), *options)
        full = batch_digests(tmp_path / f'{loop}-full')
        resumed = batch_digests(tmp_path / f'{loop}-resumed')
        assert sorted(full) == [0, 1, 2] and sorted(resumed) == [1, 2]
        results[loop] = full, resumed, full_log + resumed_log
        assert len(set(full[0]) & set(full[2])) == 0  # the epochs' augmentations differ

    full, resumed, log = results['SeededEpochBasedTrainLoop']
    assert resumed[1] == full[1] and resumed[2] == full[2]
    assert 'no per-sample random streams' not in log
    expected = final_weights(tmp_path / 'SeededEpochBasedTrainLoop-full', epoch=3)
    got = final_weights(tmp_path / 'SeededEpochBasedTrainLoop-resumed', epoch=3)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    # The control: the workers of mmengine's loop start their streams again on resume.
    full, resumed, log = results['EpochBasedTrainLoop']
    assert resumed[1] != full[1]
    assert 'the training dataloader has workers but no per-sample random streams' in log
