"""Backend switch, lazy loading, torch.compile and FLOP handles of the partition ops of MHPA
(paper section 3.2). Their ONNX export, against ONNX Runtime: tests/test_onnx_export.py."""
import os
import os.path as osp
import subprocess
import sys
import warnings

import pytest
import torch

from dualformer_mm import compat, ops
from dualformer_mm.models import PartitionAttention
from dualformer_mm.ops import _backend
from tests.utils import CUDA

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run_fresh(code: str, backend: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``DUALFORMER_OPS=backend``."""
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          env=dict(os.environ, DUALFORMER_OPS=backend), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def fresh_state(monkeypatch):
    """A backend state as in a new process, restored afterwards."""
    monkeypatch.setattr(_backend, '_state', _backend._State())
    return _backend._state


@pytest.fixture
def missing_extension(monkeypatch, fresh_state):
    """Simulate a machine where the extension was never built: importing it fails."""
    # A None entry in sys.modules makes `import dualformer_mm._ext` raise ImportError.
    monkeypatch.setitem(sys.modules, 'dualformer_mm._ext', None)
    return fresh_state


def test_mode_from_environment(monkeypatch, fresh_state):
    monkeypatch.setenv('DUALFORMER_OPS', 'Reference')
    assert ops.get_backend() == 'reference'
    monkeypatch.setenv('DUALFORMER_OPS', 'bogus')
    with pytest.raises(ValueError, match='DUALFORMER_OPS must be one of'):
        ops.set_backend(None)
    with pytest.raises(ValueError, match='backend must be one of'):
        ops.set_backend('fast')


def test_missing_extension_auto_warns_once_and_uses_reference(missing_extension):
    ops.set_backend('auto')
    x = torch.randn(2, 30, 4)
    codes = torch.randint(0, 4, (2, 30))
    with pytest.warns(RuntimeWarning, match=r'cannot be imported.*make setup'):
        pooled = ops.partition_softmax_pool(x, x, codes, 4)
    torch.testing.assert_close(pooled, ops.partition_softmax_pool_pytorch(x, x, codes, 4),
                               rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the warning is given once per process
        ops.partition_mean(x, codes, 4)
        ops.lsh_hash(x, torch.randn(4, 2))
    assert missing_extension.ext is None


def test_missing_extension_ext_mode_is_an_error(missing_extension):
    ops.set_backend('ext')
    with pytest.raises(RuntimeError, match=r'DUALFORMER_OPS=ext but the compiled extension '
                                           r'dualformer_mm\._ext cannot be imported'):
        ops.partition_distribute(torch.randn(1, 4, 2), torch.zeros(1, 3, dtype=torch.long))


@pytest.fixture
def cuda_kernels_verified(monkeypatch):
    """``auto`` as it selects once the CUDA kernels have passed on a GPU (the one-line change
    of ``_backend.CUDA_KERNELS_VERIFIED``)."""
    monkeypatch.setattr(_backend, 'CUDA_KERNELS_VERIFIED', True)


@pytest.fixture
def cuda_extension(fresh_state):
    """An extension that reports CUDA kernels, as a CUDA build does; only the choice is run."""
    if ops.load_extension() is None:
        pytest.fail(f'dualformer_mm._ext is not importable: {fresh_state.error}')
    fresh_state.ext_cuda = True
    return fresh_state


def test_auto_runs_the_reference_on_cuda_until_the_kernels_are_verified(cuda_extension):
    cuda = torch.device('cuda')  # only the device type is looked at: no GPU needed
    assert _backend.CUDA_KERNELS_VERIFIED is False
    ops.set_backend('auto')
    with pytest.warns(RuntimeWarning, match=r'auto runs the PyTorch reference ops on CUDA.*'
                                            r'make gpu-check.*DUALFORMER_OPS=ext'):
        assert not _backend.use_extension('partition_mean', cuda)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once per process, and never for CPU tensors
        for op in ('lsh_hash', 'partition_softmax_pool', 'partition_distribute'):
            assert not _backend.use_extension(op, cuda, cuda_deterministic=op == 'lsh_hash')
        assert _backend.use_extension('partition_mean', torch.device('cpu'))
    assert not _backend.auto_picks_extension('cuda') and _backend.auto_picks_extension('cpu')
    # The opt-in.
    ops.set_backend('ext')
    assert _backend.use_extension('partition_mean', cuda)


def test_verified_cuda_kernels_make_auto_pick_them(cuda_extension, cuda_kernels_verified):
    cuda = torch.device('cuda')
    ops.set_backend('auto')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert _backend.use_extension('partition_mean', cuda)
        assert _backend.use_extension('partition_mean', torch.device('cpu'))
    assert _backend.auto_picks_extension('cuda')


def test_auto_cpu_forward_says_nothing(fresh_state):
    # The CPU kernels are verified by this suite: `auto` runs them without a word.
    attn, x = _attention_and_input()
    with ops.use_backend('auto'), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('error')
        attn(x)
    assert fresh_state.ext is not None and not fresh_state.warned


@pytest.mark.parametrize('device', [CUDA])
def test_auto_cuda_forward_runs_the_reference_and_says_so(device, fresh_state):
    attn, x = _attention_and_input()
    attn, x = attn.to(device), x.to(device)
    with ops.use_backend('auto'), torch.no_grad():
        with pytest.warns(RuntimeWarning, match='DUALFORMER_OPS=ext'):
            with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                attn(x)
    assert not any(e.name.startswith('dualformer::') for e in prof.events())


def test_extension_without_cuda_kernels(fresh_state, cuda_kernels_verified):
    if ops.load_extension() is None:
        pytest.fail(f'dualformer_mm._ext is not importable: {fresh_state.error}')
    fresh_state.ext_cuda = False  # as a CPU-only build reports itself
    cuda = torch.device('cuda')  # only the device type is looked at: no GPU needed
    ops.set_backend('ext')
    with pytest.raises(RuntimeError, match='built without its CUDA kernels'):
        _backend.use_extension('partition_mean', cuda)
    ops.set_backend('auto')
    with pytest.warns(RuntimeWarning, match='built without its CUDA kernels'):
        assert not _backend.use_extension('partition_mean', cuda)
    assert _backend.use_extension('partition_mean', torch.device('cpu'))


@pytest.fixture
def deterministic_cuda_extension(cuda_extension):
    """Deterministic algorithms on, and an extension that reports CUDA kernels."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield cuda_extension
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_deterministic_mode_auto_takes_the_reference_on_cuda(deterministic_cuda_extension,
                                                             cuda_kernels_verified):
    cuda = torch.device('cuda')  # only the device type is looked at: no GPU needed
    ops.set_backend('auto')
    with pytest.warns(RuntimeWarning, match=r'use_deterministic_algorithms\(True\).*reference'):
        assert not _backend.use_extension('partition_mean', cuda)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once per process
        for op in ('partition_softmax_pool', 'partition_softmax', 'partition_distribute'):
            assert not _backend.use_extension(op, cuda)
    # The hash has no atomics: its CUDA kernel stays, as do the CPU kernels (fixed order).
    assert _backend.use_extension('lsh_hash', cuda, cuda_deterministic=True)
    assert _backend.use_extension('partition_mean', torch.device('cpu'))
    torch.use_deterministic_algorithms(False)
    assert _backend.use_extension('partition_mean', cuda)


def test_deterministic_mode_ext_is_an_error_naming_the_setting(deterministic_cuda_extension):
    cuda = torch.device('cuda')
    ops.set_backend('ext')
    with pytest.raises(RuntimeError, match=r'DUALFORMER_OPS=ext but '
                                           r'torch\.use_deterministic_algorithms\(True\)'):
        _backend.use_extension('partition_distribute', cuda)
    assert _backend.use_extension('lsh_hash', cuda, cuda_deterministic=True)
    # warn_only=True asks for warnings, not errors: the kernels run and warn themselves.
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert _backend.use_extension('partition_distribute', cuda)


def test_reference_path_never_imports_the_extension():
    # A fresh interpreter: importing the package and running the model with the reference
    # backend must not load the compiled module.
    code = ('import sys, torch, dualformer_mm; from dualformer_mm import DualFormer;'
            'DualFormer(arch="t").eval()(torch.rand(1, 3, 32, 32));'
            'assert "dualformer_mm._ext" not in sys.modules, "extension was imported";'
            'print("lazy ok")')
    out = run_fresh(code, 'reference')
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'lazy ok' in out.stdout


def _attention_and_input(intra: str = 'pool'):
    attn = PartitionAttention(dims=32, num_heads=2, num_partitions=8, sr_ratio=2,
                              attn_cfg=dict(intra=intra)).eval()
    return attn, torch.randn(2, 32, 14, 18, requires_grad=True)


@pytest.mark.parametrize('intra', ['pool', 'token'])
def test_torch_compile_has_no_graph_break(intra):
    if ops.load_extension() is None:
        pytest.fail(f'dualformer_mm._ext is not importable: {_backend._state.error}')
    torch._dynamo.reset()
    with ops.use_backend('ext'):
        attn, x = _attention_and_input(intra)
        eager = attn(x)
        # fullgraph=True turns any graph break into an error; aot_eager traces forward and
        # backward through the fake kernels and the registered autograd without compiling C++.
        compiled = torch.compile(attn, fullgraph=True, backend='aot_eager')
        out = compiled(x)
        torch.testing.assert_close(out, eager)
        grad_eager, = torch.autograd.grad(eager.sum(), x)
        grad_compiled, = torch.autograd.grad(out.sum(), x)
        torch.testing.assert_close(grad_compiled, grad_eager)
    torch._dynamo.reset()


@pytest.mark.skipif(not compat.HAS_OPCHECK, reason=f'torch {torch.__version__} has no '
                    'torch.library.opcheck (torch >= 2.4)')
def test_fake_kernels_match_real_outputs():
    if ops.load_extension() is None:
        pytest.fail(f'dualformer_mm._ext is not importable: {_backend._state.error}')
    x = torch.randn(3, 17, 5)
    codes = torch.randint(0, 4, (3, 17))
    cases = [(torch.ops.dualformer.lsh_hash, (x, torch.randn(5, 2))),
             (torch.ops.dualformer.partition_softmax_pool, (x, x, codes, 4)),
             (torch.ops.dualformer.partition_softmax, (x, codes, 4)),
             (torch.ops.dualformer.partition_mean, (x, codes, 4)),
             (torch.ops.dualformer.partition_distribute, (torch.randn(3, 4, 5), codes))]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=('test_schema', 'test_faketensor'))


@pytest.mark.parametrize('arch', ['t'])
def test_flops_equal_with_both_backends(arch):
    from mmengine.analysis import FlopAnalyzer

    from dualformer_mm.utils import PAPER_TABLE1, build_model_from_cfg, count_complexity
    if ops.load_extension() is None:
        pytest.fail(f'dualformer_mm._ext is not importable: {_backend._state.error}')
    model = build_model_from_cfg(osp.join(ROOT, 'configs', 'mmpretrain',
                                          f'dualformer_{arch}_in1k.py')).eval()
    x = torch.rand(1, 3, 224, 224)
    by_op, unsupported = {}, {}
    for backend in ('ext', 'reference'):
        with ops.use_backend(backend), torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs=(x, ))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            by_op[backend] = analyzer.by_operator()
            unsupported[backend] = analyzer.unsupported_ops()
    # The fused hash counts its projection exactly as the reference's einsum is counted ...
    assert by_op['ext']['lsh_hash'] == by_op['reference']['einsum'] > 0
    assert 'einsum' not in by_op['ext'] and 'lsh_hash' not in by_op['reference']
    # ... every custom op has a handle, and the totals agree.
    assert not [op for op in unsupported['ext'] if op.startswith('dualformer::')]
    assert sum(by_op['ext'].values()) == sum(by_op['reference'].values())
    # The cost table's own function, with the extension: still Table 1 within 2%.
    with ops.use_backend('ext'):
        flops = count_complexity(model)[1]
    assert flops == sum(by_op['ext'].values())
    assert flops / 1e9 == pytest.approx(PAPER_TABLE1[arch][1], rel=0.02)


def test_whole_backbone_compiles_as_one_graph_in_a_fresh_process():
    # In a fresh interpreter the extension is imported when the model is built, not traced on
    # the first compiled call (which was a graph break per block and a recompile per block).
    code = ('import torch, dualformer_mm; from dualformer_mm import DualFormer;'
            'm = DualFormer(arch="t").eval();'
            'e = torch._dynamo.explain(m)(torch.rand(1, 3, 64, 64));'
            'print("graphs", e.graph_count, "breaks", e.graph_break_count)')
    out = run_fresh(code, 'ext', timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'graphs 1 breaks 0' in out.stdout, out.stdout[-2000:]
