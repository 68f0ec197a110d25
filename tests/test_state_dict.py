"""The state-dict layout of DualFormer and its version (``DualFormer._version``).

Layout 1 is what the backbone saved while its conv-norm pairs were mmcv ``ConvModule``\\ s
(norms named ``bn``/``gn``), its FFN a ``Sequential`` (``ffn.0``, ``ffn.2``) and MHPA had a 1x1
``to_spatial`` conv at k = 1 as well; layout 2 is today's. A layout-1 state dict must load and
compute what the old model computed; a layout-2 one must load unchanged whatever version its
metadata says, or none; a newer version must be refused by name.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dualformer_mm import DualFormer, ops
from dualformer_mm.models import PartitionAttention
from dualformer_mm.models.layers import FFN
from tests.utils import TINY_ARCH

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# The last commit of this repository whose backbone saved layout 1 (the next one replaced
# mmcv's ConvModule).
LAYOUT_1_COMMIT = 'e86291c6f891cc2b63ebf9db1249d3034aba3bf2'


def seeded_model(seed: int = 0, **kwargs) -> DualFormer:
    """A TINY_ARCH DualFormer in float64 eval mode, with running statistics away from 0/1."""
    torch.manual_seed(seed)
    model = DualFormer(arch=TINY_ARCH, **kwargs)
    model.init_weights()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.double().eval()


def images() -> Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def run(model: DualFormer) -> Tuple[Tensor, ...]:
    # Float64 and the reference ops: the rounding differences of a migration cannot flip a
    # partition code downstream.
    with torch.no_grad(), ops.use_backend('reference'):
        return model(images())


def with_version(state: Dict[str, Tensor], version) -> Dict[str, Tensor]:
    """A copy of ``state`` whose metadata records ``version`` (None: no metadata at all)."""
    copy = OrderedDict(state)
    if version is not None:
        copy._metadata = OrderedDict({'': dict(version=version)})
    return copy


def as_layout_1(model: DualFormer, norm: str = 'bn') -> Tuple[Dict[str, Tensor], List]:
    """``model``'s state dict under the names of layout 1, with a random 1x1 conv
    ``to_spatial`` after the aggregation of every MHPA at k = 1.

    Returns the state dict and, per such MHPA, ``(aggregate module, conv weight, bias)``.
    """
    state = OrderedDict()
    renames = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Sequential) and 'norm' in module._modules:
            renames.append((f'{name}.norm.', f'{name}.{norm}.'))
        elif isinstance(module, FFN):
            renames += [(f'{name}.fc1.', f'{name}.0.'), (f'{name}.fc2.', f'{name}.2.')]
    for key, value in model.state_dict().items():
        for new, old in renames:
            if key.startswith(new):
                key = old + key[len(new):]
        state[key] = value.clone()
    extra_convs = []
    gen = torch.Generator().manual_seed(2)
    for name, module in model.named_modules():
        if isinstance(module, PartitionAttention) and module.sr_ratio == 1:
            dims = module.dims
            weight = torch.randn(dims, dims, 1, 1, generator=gen, dtype=torch.float64) * 0.2
            bias = torch.randn(dims, generator=gen, dtype=torch.float64) * 0.1
            state[f'{name}.to_spatial.weight'], state[f'{name}.to_spatial.bias'] = weight, bias
            extra_convs.append((module.aggregate, weight, bias))
    return state, extra_convs


def old_forward(model: DualFormer, extra_convs: List) -> Tuple[Tensor, ...]:
    """What the layout-1 model computed: ``model`` with each extra 1x1 conv applied to its
    aggregation's output tokens, as the old ``to_spatial`` was at k = 1."""
    hooks = [aggregate.register_forward_hook(
        lambda m, args, out, w=weight, b=bias: F.linear(out, w.flatten(1), b))
        for aggregate, weight, bias in extra_convs]
    try:
        return run(model)
    finally:
        for hook in hooks:
            hook.remove()


def assert_outputs_close(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_state_dict_records_layout_version_2():
    model = DualFormer(arch=TINY_ARCH)
    assert DualFormer._version == 2
    assert model.state_dict()._metadata['']['version'] == 2
    # Inside a classifier or detector: under the backbone's own prefix.
    wrapped = torch.nn.ModuleDict(dict(backbone=model))
    assert wrapped.state_dict()._metadata['backbone']['version'] == 2


@pytest.mark.parametrize('version', [None, 1])
@pytest.mark.parametrize('norm_cfg, norm', [(dict(type='BN'), 'bn'),
                                            (dict(type='GN', num_groups=1), 'gn')])
def test_layout_1_state_dict_loads_and_computes_as_before(version, norm_cfg, norm):
    source = seeded_model(norm_cfg=norm_cfg)
    old_state, extra_convs = as_layout_1(source, norm)
    assert len(extra_convs) == 2  # the two stages at k = 1 of TINY_ARCH
    for key in ('stem.0.%s.weight' % norm, 'stages.1.downsample.%s.bias' % norm,
                'stages.0.blocks.0.attn.down.%s.weight' % norm,
                'stages.0.blocks.0.conv.layers.1.%s.weight' % norm,
                'stages.3.blocks.0.ffn.0.weight', 'stages.3.blocks.0.ffn.2.bias',
                'stages.2.blocks.0.attn.to_spatial.weight'):
        assert key in old_state, key
    want = old_forward(source, extra_convs)
    assert not torch.allclose(want[-1], run(source)[-1])  # the extra convs change the output

    model = seeded_model(seed=1, norm_cfg=norm_cfg)
    model.load_state_dict(with_version(old_state, version), strict=True)
    assert_outputs_close(run(model), want)
    # Saved again, it has today's layout.
    assert model.state_dict().keys() == source.state_dict().keys()
    assert model.state_dict()._metadata['']['version'] == 2


@pytest.mark.parametrize('version', [None, 1, 2])
def test_layout_2_state_dict_loads_unchanged(version):
    # Checkpoints saved before the version was recorded say 1, or carry no metadata.
    source = seeded_model()
    state = with_version(source.state_dict(), version)
    model = seeded_model(seed=1)
    model.load_state_dict(state, strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for a, b in zip(run(model), run(source)):
        assert torch.equal(a, b)


def test_newer_layout_is_refused_by_name():
    state = with_version(seeded_model().state_dict(), 3)
    with pytest.raises(RuntimeError, match=r"under '' has layout version 3; this "
                                           r'dualformer-mm reads versions up to 2'):
        seeded_model(seed=1).load_state_dict(state)


def test_layout_1_classifier_checkpoint_as_pretrained_backbone(tmp_path):
    # The detection and segmentation configs load the backbone of a classifier checkpoint
    # with a key prefix: mmengine strips it and the metadata, and does not load strictly.
    source = seeded_model()
    old_state, extra_convs = as_layout_1(source)
    want = old_forward(source, extra_convs)
    checkpoint = tmp_path / 'cls.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in old_state.items()},
                'meta': {}}, checkpoint)
    torch.manual_seed(1)
    model = DualFormer(arch=TINY_ARCH, init_cfg=dict(type='Pretrained', prefix='backbone.',
                                                    checkpoint=str(checkpoint))).double()
    model.init_weights()
    assert_outputs_close(run(model.eval()), want)


LAYOUT_1_SCRIPT = '''
import sys, torch
from dualformer_mm import DualFormer
TINY = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 144], num_heads=[1, 2, 2, 3],
            mlp_ratios=[2, 2, 2, 2])
torch.manual_seed(0)
model = DualFormer(arch=TINY)
model.init_weights()
for m in model.modules():
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
model = model.double().eval()
x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
with torch.no_grad():
    outs = model(x)
torch.save(dict(state_dict=model.state_dict(), outs=outs, x=x), sys.argv[1])
'''


@pytest.mark.slow
def test_checkpoint_saved_by_the_layout_1_code(tmp_path):
    # The backbone as it was at LAYOUT_1_COMMIT, run from git in its own process, saves a
    # checkpoint and its outputs; today's backbone loads it strictly and computes the same.
    if shutil.which('git') is None or subprocess.run(
            ['git', 'cat-file', '-e', f'{LAYOUT_1_COMMIT}^{{commit}}'], cwd=ROOT,
            capture_output=True).returncode != 0:
        pytest.skip(f'needs the git history with commit {LAYOUT_1_COMMIT}')
    old_tree = tmp_path / 'old'
    old_tree.mkdir()
    archive = subprocess.run(['git', 'archive', LAYOUT_1_COMMIT, 'dualformer_mm'], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', str(old_tree)], input=archive, check=True)
    saved = tmp_path / 'layout1.pth'
    # The old package without its compiled ops: the PyTorch reference ops, as below.
    env = dict(os.environ, PYTHONPATH=str(old_tree), DUALFORMER_OPS='reference',
               PYTHONWARNINGS='ignore')
    result = subprocess.run([sys.executable, '-c', LAYOUT_1_SCRIPT, str(saved)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    old = torch.load(saved, weights_only=True)
    assert any('.bn.' in key for key in old['state_dict'])  # the old names, as saved
    assert 'stages.3.blocks.0.attn.to_spatial.weight' in old['state_dict']
    model = DualFormer(arch=TINY_ARCH).double().eval()
    model.load_state_dict(old['state_dict'], strict=True)
    with torch.no_grad(), ops.use_backend('reference'):
        got = model(old['x'])
    assert_outputs_close(got, old['outs'])
