# Copyright (c) dualformer-mm contributors.
"""Package metadata and the build of ``dualformer_mm._ext``, the fused partition ops of MHPA
(paper section 3.2; sources in ``dualformer_mm/ops/csrc``, design in ``docs/ops.md``).

The CPU (OpenMP) kernels are always compiled. The CUDA kernels are compiled in as well whenever
a CUDA toolkit (``nvcc``) and a CUDA-enabled torch are both present. A failed compile fails the
install: nothing here catches build errors.

Environment:
    DUALFORMER_CUDA: ``auto`` (default) builds CUDA when possible, ``1`` requires it (an error
        names what is missing), ``0`` builds the CPU kernels only.
    TORCH_CUDA_ARCH_LIST: GPU architectures. Unset, the rule of ``cuda_build.py`` (shared with
        the mmcv build of ``tools/setup_env.sh``) picks the visible GPU's, or, without a GPU,
        every architecture of the installed torch with PTX for the newest.
    CUDA_HOME: the toolkit; derived from ``nvcc`` when unset or wrong
        (``cuda_build.cuda_home``).
    MAX_JOBS: parallel compile jobs (ninja).

Installing into an existing environment (README, "Use it in your own OpenMMLab environment"):
``pip install --no-build-isolation .`` (or ``-e .``) compiles against the torch already there.
torch is required to be installed first and inside the supported range, checked here before
pip resolves anything, so pip never installs, upgrades or downgrades it; mmcv is no
requirement at all (an environment has mmcv or mmcv-lite; ``dualformer_mm.compat`` says which
to install when neither is importable).
"""
import glob
import importlib.util
import os
import os.path as osp
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
CSRC = osp.join('dualformer_mm', 'ops', 'csrc')
# The supported torch releases (dualformer_mm/compat.py: MIN_TORCH, MAX_TESTED_TORCH).
MIN_TORCH, MAX_TORCH = (2, 1), (2, 15)
TORCH_RANGE = '>=2.1,<2.16'


def _load_cuda_config():
    """``cuda_build.py`` beside this file, loaded by its path: a PEP 517 build does not always
    put this folder on ``sys.path``."""
    path = osp.join(ROOT, 'cuda_build.py')
    spec = importlib.util.spec_from_file_location('dualformer_cuda_build', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cuda_config = _load_cuda_config()


def _log(msg: str) -> None:
    print(f'[dualformer_mm setup] {msg}', file=sys.stderr)


def _extensions() -> list:
    """The ``dualformer_mm._ext`` extension, with CUDA when the machine can build it."""
    mode = cuda_config.read_mode(os.environ, cuda_config.EXT_CUDA_ENV)
    cuda_home = cuda_config.cuda_home() if mode != '0' else None
    # torch itself, not torch.utils.cpp_extension, which reads CUDA_HOME once when imported.
    try:
        import torch
    except ImportError as err:
        raise RuntimeError(
            f'dualformer_mm compiles against the installed torch, and none is importable '
            f'({err}): install torch {TORCH_RANGE} first, then `pip install '
            '--no-build-isolation .` (an isolated build would not see it)') from err
    found = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2])
    if not MIN_TORCH <= found <= MAX_TORCH:
        raise RuntimeError(f'dualformer_mm supports torch {TORCH_RANGE}, found torch '
                           f'{torch.__version__}: install a supported torch first (this build '
                           'never changes the installed one)')
    with_cuda, reason = cuda_config.extension_cuda_plan(
        mode, torch.__version__, torch.version.cuda, cuda_home,
        cuda_config.nvcc_version(cuda_home) if cuda_home else None)
    if with_cuda:
        os.environ['CUDA_HOME'] = cuda_home
    else:
        _log(f'building the CPU kernels only: {reason}')
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(osp.join(CSRC, '*.cpp')) + glob.glob(osp.join(CSRC, 'cpu', '*.cpp')))
    # -fno-trapping-math: no kernel reads FP exception flags, and it lets GCC vectorise the
    # clamped exp of the softmax pooling (NaN and inf semantics are kept).
    cxx_flags = ['-O3', '-fopenmp', '-fno-trapping-math']
    # -fopenmp on the link too: at::parallel_for's OpenMP pragmas are compiled into our code.
    link_flags = ['-fopenmp']
    if not with_cuda:
        return [CppExtension('dualformer_mm._ext', sources, extra_compile_args={'cxx': cxx_flags},
                             extra_link_args=link_flags)]
    archs = cuda_config.choose_archs()
    if archs is None:
        raise RuntimeError(f'torch {torch.__version__} lists no CUDA architecture and no GPU is '
                           'visible: set TORCH_CUDA_ARCH_LIST or DUALFORMER_CUDA=0')
    # torch.utils.cpp_extension reads the list from the environment when it compiles.
    os.environ['TORCH_CUDA_ARCH_LIST'] = archs.archs
    _log(f'building CPU and CUDA kernels with CUDA_HOME={cuda_home}, '
         f'TORCH_CUDA_ARCH_LIST={archs.describe()}')
    sources += sorted(glob.glob(osp.join(CSRC, 'cuda', '*.cu')))
    return [CUDAExtension(
        'dualformer_mm._ext', sources, define_macros=[('WITH_CUDA', None)],
        include_dirs=cuda_config.extra_cuda_includes(cuda_home),
        extra_compile_args={'cxx': cxx_flags, 'nvcc': ['-O3']},
        extra_link_args=link_flags)]


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=True)


TOOLBOXES = {
    'mmpretrain': ['mmpretrain>=1.0,<1.3'],
    'mmdet': ['mmdet>=3.0,<3.4'],
    'mmseg': ['mmsegmentation>=1.0,<1.3', 'ftfy', 'regex'],
}

setup(
    name='dualformer_mm',
    version='0.1.0',
    description='DualFormer (Dual Path Transformer with Partition Attention) for OpenMMLab 2.0',
    python_requires='>=3.9',
    # torch: installed before the build (checked above), so pip only confirms it. mmcv: not
    # here (mmcv or mmcv-lite; dualformer_mm.compat.check_mmcv).
    install_requires=[f'torch{TORCH_RANGE}', 'mmengine>=0.8.5,<1', 'numpy>=1.21,<3'],
    extras_require=dict(TOOLBOXES, toolboxes=sorted({r for v in TOOLBOXES.values() for r in v}),
                        tests=['pytest>=7', 'pytest-timeout>=2']),
    packages=find_packages(include=['dualformer_mm*']),
    ext_modules=_extensions(),
    cmdclass={'build_ext': _build_ext_class()},
    # Every source and header of the extension, so that an sdist (and a non-editable install,
    # which copies the package) can build it; tests/test_install.py checks the sdist.
    package_data={'dualformer_mm.ops': ['csrc/*.h', 'csrc/*.cpp', 'csrc/cpu/*.h',
                                        'csrc/cpu/*.cpp', 'csrc/cuda/*.cu', 'csrc/cuda/*.cuh']},
    zip_safe=False,
)
