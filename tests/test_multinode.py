"""Several machines, as docs/usage.md starts them, simulated on one: ``NNODES=2`` with
``NODE_RANK=0`` and ``NODE_RANK=1``, one process per "node" (``tools/dist_train.sh CONFIG 1``
twice, in parallel, on one free port), train the classification demo config for three
iterations over gloo; both ranks must end with the same weights.

Each rank saves its parameters before and after training through a small hook that the test
writes to a temporary module and names in the override config (the Runner writes
checkpoints from rank 0 only). BatchNorm's running statistics are buffers each rank keeps
from its own half of the batch (the config has plain BN), so only parameters are compared.
"""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import numpy as np
import torch

from dualformer_mm.demo.synthetic import make_classification

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

HOOK = '''
import json, os
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeights(Hook):
    """Write this rank's parameters before and after training, and where it ran."""

    def __init__(self, out):
        self.out = out

    def _save(self, runner, tag):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        rank = int(os.environ['RANK'])
        torch.save({n: p.detach().clone() for n, p in model.named_parameters()},
                   os.path.join(self.out, f'{tag}_rank{rank}.pth'))
        with open(os.path.join(self.out, f'{tag}_rank{rank}.json'), 'w') as f:
            json.dump({k: os.environ.get(k) for k in
                       ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'GROUP_RANK')}
                      | dict(iter=runner.iter), f)

    def before_train(self, runner):
        self._save(runner, 'init')

    def after_train(self, runner):
        self._save(runner, 'final')
'''

OVERRIDE = '''_base_ = '{base}'
data_root = '{data}'
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
# 12 images, 2 per rank and step on 2 ranks: 3 iterations; no validation, no checkpoint.
train_cfg = dict(max_epochs=1, val_interval=100)
default_hooks = dict(logger=dict(interval=1), checkpoint=None)
custom_imports = dict(imports=['dualformer_mm', 'multinode_hooks'], allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook'), dict(type='SaveRankWeights', out='{out}')]
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_two_nodes_train_to_the_same_weights(tmp_path):
    data = tmp_path / 'cls'
    make_classification(str(data), np.random.RandomState(0), dict(train=12, val=2))
    (tmp_path / 'multinode_hooks.py').write_text(HOOK)
    out = tmp_path / 'weights'
    out.mkdir()
    cfg = tmp_path / 'cls_multinode.py'
    cfg.write_text(OVERRIDE.format(
        base=osp.join(ROOT, 'configs', 'demo', 'cls_dualformer_t_demo.py'), data=data, out=out))
    port = str(_free_port())
    procs = []
    for node_rank in (0, 1):
        env = dict(os.environ, PYTHON=sys.executable, NNODES='2', NODE_RANK=str(node_rank),
                   MASTER_ADDR='127.0.0.1', PORT=port, OMP_NUM_THREADS='1',
                   PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
        log = open(tmp_path / f'node{node_rank}.log', 'w')
        procs.append((subprocess.Popen(
            ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), str(cfg), '1', '--work-dir',
             str(tmp_path / f'work{node_rank}')], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        try:
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = [(tmp_path / f'node{r}.log').read_text() for r in (0, 1)]
    for (proc, _), text in zip(procs, logs):
        assert proc.returncode == 0, text[-4000:]
    # Rank 0 logs for the run: two processes, over gloo, three iterations.
    assert "distributed backend 'nccl' replaced by 'gloo', 2 CPU processes" in logs[0]
    assert 'Epoch(train) [1][3/3]' in logs[0]
    where = [json.loads((out / f'final_rank{r}.json').read_text()) for r in (0, 1)]
    assert [(w['RANK'], w['GROUP_RANK'], w['WORLD_SIZE'], w['iter']) for w in where] == [
        ('0', '0', '2', 3), ('1', '1', '2', 3)]
    init = [torch.load(out / f'init_rank{r}.pth', weights_only=True) for r in (0, 1)]
    final = [torch.load(out / f'final_rank{r}.pth', weights_only=True) for r in (0, 1)]
    assert list(final[0]) == list(final[1]) and len(final[0]) > 100
    for name in final[0]:
        assert torch.equal(init[0][name], init[1][name]), f'{name} differs before training'
        assert torch.equal(final[0][name], final[1][name]), f'{name} differs between ranks'
    # Training moved the weights, so the equality above is not that of two untouched models.
    changed = [n for n in final[0] if not torch.equal(final[0][n], init[0][n])]
    assert len(changed) > len(final[0]) // 2
