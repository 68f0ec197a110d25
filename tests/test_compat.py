"""``dualformer_mm.compat`` on the installed torch, numpy and mmcv: each branch does what its
version needs, and what the package refuses it refuses in one line.

These tests need no toolbox: ``make test-compat`` runs them on the oldest and the newest
corner of the support range (docs/install.md, "Into your own OpenMMLab environment").
"""
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dualformer_mm import DualFormer, compat
from dualformer_mm.utils import PAPER_TABLE1, count_complexity
from tests.utils import ARCHS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _import_error(tmp_path, prelude):
    """The last stderr line of ``import dualformer_mm`` after ``prelude``, in a new process."""
    out = subprocess.run([sys.executable, '-c', f'{prelude}\nimport dualformer_mm'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             [str(tmp_path), ROOT, os.environ.get('PYTHONPATH', '')])))
    assert out.returncode != 0
    return out.stderr.strip().splitlines()[-1]


def test_a_torch_below_the_floor_is_refused_in_one_line(tmp_path):
    (tmp_path / 'torch').mkdir()
    (tmp_path / 'torch' / '__init__.py').write_text("__version__ = '2.0.1'\n")
    assert _import_error(tmp_path, '') == \
        'ImportError: dualformer_mm needs torch >= 2.1, found torch 2.0.1'


def test_missing_mmcv_names_both_packages(tmp_path):
    line = _import_error(tmp_path, "import sys; sys.modules['mmcv'] = None")
    assert line.startswith('ImportError: dualformer_mm needs mmcv or mmcv-lite >= 2.0 and '
                           'neither is importable')
    assert 'pip install "mmcv-lite>=2.0,<2.3"' in line


def test_mmcv_of_the_1x_series_is_refused(tmp_path):
    (tmp_path / 'mmcv').mkdir()
    (tmp_path / 'mmcv' / '__init__.py').write_text("__version__ = '1.7.2'\n")
    line = _import_error(tmp_path, '')
    assert line.startswith('ImportError: dualformer_mm needs mmcv or mmcv-lite >= 2.0, found '
                           'mmcv 1.7.2')


def test_the_import_checks_are_the_version_modules_ranges():
    # dualformer_mm/version.py holds the ranges setup.py reads too (tests/test_metadata.py).
    from dualformer_mm import version
    compat.check_torch_version(f'{version.TORCH.oldest}.0')
    older = f'{version.TORCH.minimum[0]}.{version.TORCH.minimum[1] - 1}.9'
    with pytest.raises(ImportError, match=rf'needs torch >= {version.TORCH.oldest}, found '
                                          rf'torch {re.escape(older)}$'):
        compat.check_torch_version(older)
    assert compat.MIN_TORCH == version.TORCH.minimum
    assert compat.MAX_TESTED_TORCH == version.release(version.TORCH.tested[-1])[:2]
    assert compat.MIN_MMCV == version.MMCV.minimum
    assert version.MMCV.contains(compat.MMCV_VERSION)


def test_versions_are_read_from_local_and_pre_releases():
    assert compat.parse_version('2.1.2+cu121') == (2, 1)
    assert compat.parse_version('2.16.0a0+git1234') == (2, 16)
    with pytest.raises(ValueError, match="'abc'"):
        compat.parse_version('abc')
    assert compat.TORCH_VERSION == compat.parse_version(torch.__version__)


def test_is_compiling_is_true_only_while_dynamo_traces():
    if not compat.COMPILE_SUPPORTED:
        pytest.skip(compat.LIMITATIONS)
    assert compat.is_compiling() is False

    def marked(x):
        return x + (1 if compat.is_compiling() else 0)

    x = torch.zeros(3)
    torch._dynamo.reset()
    try:
        assert torch.equal(torch.compile(marked, backend='eager', fullgraph=True)(x),
                           torch.ones(3))
    finally:
        torch._dynamo.reset()
    assert torch.equal(marked(x), x)


def test_dtype_promotion_traces_into_one_graph():
    if not compat.COMPILE_SUPPORTED:
        pytest.skip(compat.LIMITATIONS)
    floats = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
    pairs = [(a, b) for a in floats for b in floats]

    def promote_all(x):
        return [x.to(compat.promote_types(a, b)) for a, b in pairs]

    torch._dynamo.reset()
    try:
        got = torch.compile(promote_all, backend='eager', fullgraph=True)(torch.ones(1))
    finally:
        torch._dynamo.reset()
    assert [t.dtype for t in got] == [torch.promote_types(a, b) for a, b in pairs]
    assert compat.promote_types(torch.int64, torch.float16) == torch.float16


def test_autocast_query_per_device():
    assert not compat.is_autocast_enabled('cpu')
    # bfloat16: the one CPU autocast type of every supported torch (float16 from 2.2).
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert compat.is_autocast_enabled('cpu')
        assert not compat.is_autocast_enabled('cuda')
    assert not compat.is_autocast_enabled('cpu')


def test_numpy_reconstruction_is_the_one_numpy_pickles_name():
    # The allowlist names these functions; a pickled array refers to them by module path.
    data = pickle.dumps(np.arange(3, dtype=np.float32), protocol=2)
    reconstruct = compat.numpy_multiarray._reconstruct
    assert reconstruct.__module__.encode() in data and b'_reconstruct' in data
    assert pickle.loads(data).dtype == np.float32


@pytest.mark.skipif(not compat.HAS_SAFE_GLOBALS, reason=f'torch {torch.__version__} has no '
                    'weights_only allowlist to extend (add_safe_globals: torch >= 2.4)')
def test_numpy_arrays_load_under_weights_only(tmp_path):
    path = tmp_path / 'arrays.pth'
    state = {'a': np.arange(6, dtype=np.int64).reshape(2, 3), 's': np.float32(1.5),
             'u': np.random.RandomState(0).get_state()[1]}
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert np.array_equal(loaded['a'], state['a']) and loaded['s'] == state['s']
    assert loaded['u'].dtype == np.uint32 and np.array_equal(loaded['u'], state['u'])


def test_limitations_name_exactly_what_is_missing():
    missing = {'fake kernels': not compat.HAS_FAKE_KERNELS,
               'torch.compile on Python': not compat.COMPILE_SUPPORTED,
               'dynamo ONNX exporter': not compat.HAS_DYNAMO_ONNX_EXPORT,
               'float16 autocast on the CPU': torch.float16 not in compat.CPU_AUTOCAST_DTYPES}
    text = compat.describe_limitations() or ''
    assert {k for k in missing if k in text} == {k for k, v in missing.items() if v}
    out = subprocess.run([sys.executable, '-m', 'dualformer_mm.compat'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[1] == (compat.LIMITATIONS or 'no limitations on this torch')


class _Classifier(torch.nn.Module):
    """The ImageNet classifier of ``configs/_base_/models/dualformer_cls.py`` without
    mmpretrain: the last stage, global average pooling and a linear head."""

    def __init__(self, arch):
        super().__init__()
        self.backbone = DualFormer(arch=arch, out_indices=(3, ))
        self.head = torch.nn.Linear(self.backbone.channels[-1], 1000)

    def forward(self, x):
        return self.head(self.backbone(x)[-1].mean((2, 3)))


@pytest.mark.parametrize('arch', ARCHS)
def test_cost_matches_table1_without_a_toolbox(arch):
    # The FLOP counter traces the model with this torch's jit: its count must not move.
    params, flops = count_complexity(_Classifier(arch))
    paper_params, paper_flops = PAPER_TABLE1[arch]
    assert params / 1e6 == pytest.approx(paper_params, rel=0.02)
    assert flops / 1e9 == pytest.approx(paper_flops, rel=0.02)
