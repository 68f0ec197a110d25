"""Checkpoints under ``weights_only``: mmengine's load and resume where torch's default allows,
code-running pickles are refused, and a foreign global is refused exactly as torch alone
refuses it, on every torch of the supported range (``dualformer_mm.compat``)."""
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import dualformer_mm  # noqa: F401  (installs the allowlist)
from dualformer_mm import DualFormer, compat

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class TinyModel(BaseModel):
    """A one-layer model for a real mmengine training loop."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.fc(inputs)  # default_collate already stacked the batch
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class Points(Dataset):
    """Eight fixed points, each drawn with fresh noise from the global torch generator (the
    random augmentation a resumed run must draw again exactly)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        point = torch.randn(4, generator=torch.Generator().manual_seed(i))
        return dict(inputs=point + 0.5 * torch.randn(4))


def make_runner(work_dir, max_epochs, resume=False, hooks=(), schedule=True):
    """An mmengine Runner checkpointing every epoch."""
    torch.manual_seed(0)  # the model is built before the Runner seeds: the same start each time
    return Runner(
        model=TinyModel(), work_dir=str(work_dir), resume=resume,
        train_dataloader=dict(dataset=Points(), batch_size=2,
                              collate_fn=dict(type='default_collate'),
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True)
        if schedule else None,
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        custom_hooks=[dict(type=h) for h in hooks],
        randomness=dict(seed=0), experiment_name=f'exp{max_epochs}{resume}{len(hooks)}')


def test_mmengine_checkpoint_loads_and_resumes(tmp_path):
    make_runner(tmp_path, 2).train()
    # torch's default: weights_only=True from torch 2.6 (the allowlist lets the message hub
    # through), a plain unpickling before.
    ckpt = torch.load(tmp_path / 'epoch_2.pth')
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    resumed = make_runner(tmp_path, 3, resume=True)
    resumed.train()
    assert resumed.iter == 12 and resumed.epoch == 3


def _final_weight(work_dir):
    return torch.load(osp.join(work_dir, 'epoch_3.pth'), map_location='cpu')['state_dict']


def test_random_state_hook_makes_a_resumed_run_draw_the_same_noise(tmp_path):
    # A constant learning rate: a 2-epoch run is then the first part of the 3-epoch one.
    make_runner(tmp_path / 'full', 3, hooks=['RandomStateHook'], schedule=False).train()
    expected = _final_weight(tmp_path / 'full')
    for name, hooks in (('hook', ['RandomStateHook']), ('control', [])):
        work = tmp_path / name
        make_runner(work, 2, hooks=hooks, schedule=False).train()
        make_runner(work, 3, resume=True, hooks=hooks, schedule=False).train()
        same = all(torch.equal(expected[k], v) for k, v in _final_weight(work).items())
        # With the hook the random states of epoch 3 are restored; without it the resumed
        # run re-seeds and draws other noise (so the comparison above can fail).
        assert same == (name == 'hook'), name


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


# Before torch 2.6 torch.load (and so mmengine's loaders, which call it without the argument)
# unpickles anything unless weights_only=True is passed: only that explicit load can refuse.
DEFAULT_REFUSES = pytest.mark.skipif(
    not compat.WEIGHTS_ONLY_BY_DEFAULT,
    reason=f'torch {torch.__version__} loads with weights_only=False by default (before 2.6)')
LOADERS = {
    'torch.load weights_only=True': lambda path: torch.load(path, weights_only=True),
    'torch.load default': lambda path: torch.load(path),
    'mmengine load_checkpoint': lambda path: load_checkpoint(nn.Linear(1, 1), str(path)),
    'DualFormer Pretrained': lambda path: DualFormer(
        arch='t', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights(),
}


@pytest.mark.parametrize('loader', [
    pytest.param(name, marks=[] if name == 'torch.load weights_only=True' else [DEFAULT_REFUSES])
    for name in LOADERS])
@pytest.mark.parametrize('payload', ['system', 'getattr'])
def test_malicious_checkpoint_refused(tmp_path, payload, loader):
    marker = tmp_path / 'pwned'
    evil = RunsCode(marker) if payload == 'system' else WalksAttributes()
    path = tmp_path / 'evil.pth'
    state = DualFormer(arch='t').state_dict()
    state['backdoor'] = evil
    torch.save({'state_dict': state}, path)
    with pytest.raises(pickle.UnpicklingError, match='weights_only|not among'):
        LOADERS[loader](path)
    assert not osp.exists(marker), 'the checkpoint ran code'


def _load_in_fresh_interpreter(path, import_package):
    """Type and message of what ``torch.load(path, weights_only=True)`` raises in a new
    process, with or without ``import dualformer_mm`` before it."""
    code = textwrap.dedent(f"""
        import torch
        if {import_package!r}:
            import dualformer_mm
        try:
            torch.load({str(path)!r}, weights_only=True)
        except Exception as err:
            print(type(err).__module__, type(err).__qualname__)
            print(err)
        else:
            print('loaded')
    """)
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_foreign_global_is_refused_exactly_as_without_the_package(tmp_path):
    import fractions
    path = tmp_path / 'foreign.pth'
    torch.save({'weight': torch.ones(2), 'ratio': fractions.Fraction(1, 3)}, path)
    alone = _load_in_fresh_interpreter(path, False)
    assert alone.splitlines()[0].endswith('UnpicklingError'), alone
    assert 'fractions' in alone and 'Fraction' in alone
    assert _load_in_fresh_interpreter(path, True) == alone


def test_allowlist_switch_and_form(tmp_path):
    # Which of the package's entries torch's allowlist holds after the import, and in what
    # form (torch's own modules add entries of their own as they are imported).
    code = textwrap.dedent("""
        import dualformer_mm
        from dualformer_mm import compat
        from dualformer_mm.utils.checkpoint import mmengine_safe_globals
        listed = compat.get_safe_globals()
        present = [e for e in mmengine_safe_globals() if any(
            e is x or (isinstance(e, tuple) and isinstance(x, tuple) and e == x) for x in listed)]
        print(len(present), sum(isinstance(e, tuple) for e in present),
              sum(isinstance(x, tuple) for x in listed))
    """)

    def run(setting):
        environ = dict(os.environ)
        environ.pop('DUALFORMER_SAFE_GLOBALS', None)
        if setting is not None:
            environ['DUALFORMER_SAFE_GLOBALS'] = setting
        return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                              text=True, env=environ, timeout=300)

    from dualformer_mm.utils.checkpoint import mmengine_safe_globals
    entries = mmengine_safe_globals()
    named = sum(isinstance(e, tuple) for e in entries)
    off = run('0')
    assert off.returncode == 0, off.stderr[-3000:]
    assert off.stdout.split()[:2] == ['0', '0']  # none of ours: torch's allowlist untouched
    on = run(None)
    assert on.returncode == 0, on.stderr[-3000:]
    present, pairs, pairs_listed = map(int, on.stdout.split())
    if not compat.HAS_SAFE_GLOBALS:  # torch 2.1-2.3: no allowlist to extend
        assert (present, pairs) == (0, 0)
    elif not compat.SAFE_GLOBALS_TAKE_NAMES:  # torch 2.4-2.5: plain callables only
        assert (present, pairs, pairs_listed) == (len(entries) - named, 0, 0)
    else:
        assert (present, pairs) == (len(entries), named)
    bad = run('yes')
    assert bad.returncode != 0
    assert "DUALFORMER_SAFE_GLOBALS must be 1" in bad.stderr and "got 'yes'" in bad.stderr
