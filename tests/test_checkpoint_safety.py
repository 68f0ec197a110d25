"""mmengine checkpoints load under weights_only=True; code-running pickles are refused."""
import os
import os.path as osp
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import dualformer_mm  # noqa: F401  (installs the allowlist)
from dualformer_mm import DualFormer


class TinyModel(BaseModel):
    """A one-layer model for a real mmengine training loop."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.fc(inputs)  # default_collate already stacked the batch
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class Points(Dataset):
    """Eight fixed random points."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.randn(4, generator=torch.Generator().manual_seed(i)))


def make_runner(work_dir, max_epochs, resume=False):
    """An mmengine Runner checkpointing every epoch."""
    return Runner(
        model=TinyModel(), work_dir=str(work_dir), resume=resume,
        train_dataloader=dict(dataset=Points(), batch_size=2, collate_fn=dict(type='default_collate'),
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0), experiment_name=f'exp{max_epochs}{resume}')


def test_mmengine_checkpoint_loads_and_resumes(tmp_path):
    make_runner(tmp_path, 2).train()
    ckpt = torch.load(tmp_path / 'epoch_2.pth')  # weights_only=True is torch's default
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    resumed = make_runner(tmp_path, 3, resume=True)
    resumed.train()
    assert resumed.iter == 12 and resumed.epoch == 3


class RunsCode:
    """Unpickling this would create a marker file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class WalksAttributes:
    """A pickle that uses getattr to reach beyond the allowed HistoryBuffer methods."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize('payload', ['system', 'getattr'])
def test_malicious_checkpoint_refused_everywhere(tmp_path, payload):
    marker = tmp_path / 'pwned'
    evil = RunsCode(marker) if payload == 'system' else WalksAttributes()
    path = tmp_path / 'evil.pth'
    state = DualFormer(arch='t').state_dict()
    state['backdoor'] = evil
    torch.save({'state_dict': state}, path)

    loaders = [
        lambda: torch.load(path),
        lambda: load_checkpoint(nn.Linear(1, 1), str(path)),
        lambda: DualFormer(arch='t', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        .init_weights(),
    ]
    for load in loaders:
        with pytest.raises(pickle.UnpicklingError, match='weights_only|not among'):
            load()
    assert not osp.exists(marker), 'the checkpoint ran code'
