# Copyright (c) dualformer-mm contributors.
"""Package metadata and the build of ``dualformer_mm._ext``, the fused partition ops of MHPA
(paper section 3.2; sources in ``dualformer_mm/ops/csrc``, design in ``docs/ops.md``).

The CPU (OpenMP) kernels are always compiled. The CUDA kernels are compiled in as well whenever
a CUDA toolkit (``nvcc``) and a CUDA-enabled torch are both present. A failed compile fails the
install: nothing here catches build errors.

Environment:
    DUALFORMER_CUDA: ``auto`` (default) builds CUDA when possible, ``1`` requires it (an error
        names what is missing), ``0`` builds the CPU kernels only.
    TORCH_CUDA_ARCH_LIST: GPU architectures. Unset, the rule of ``dualformer_mm/_cuda_arch.py``
        (shared with the mmcv build of ``tools/setup_env.sh``) picks the visible GPU's, or,
        without a GPU, every architecture of the installed torch with PTX for the newest.
    CUDA_HOME: the toolkit; derived from ``nvcc`` when unset or wrong
        (``_cuda_arch.cuda_home``).
    MAX_JOBS: parallel compile jobs (ninja).
"""
import glob
import importlib.util
import os
import os.path as osp
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
CSRC = osp.join('dualformer_mm', 'ops', 'csrc')


def _load_cuda_config():
    """``dualformer_mm/_cuda_arch.py`` loaded by its path: the package itself cannot be imported
    before its dependencies (mmengine, mmcv) are installed."""
    path = osp.join(ROOT, 'dualformer_mm', '_cuda_arch.py')
    spec = importlib.util.spec_from_file_location('_dualformer_cuda_arch', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cuda_config = _load_cuda_config()


def _log(msg: str) -> None:
    print(f'[dualformer_mm setup] {msg}', file=sys.stderr)


def _extensions() -> list:
    """The ``dualformer_mm._ext`` extension, with CUDA when the machine can build it."""
    mode = os.environ.get('DUALFORMER_CUDA', 'auto').lower()
    if mode not in ('auto', '1', '0'):
        raise ValueError(f'DUALFORMER_CUDA must be auto, 1 or 0, got {mode!r}')
    cuda_home = cuda_config.cuda_home() if mode != '0' else None
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, when it is imported.
        os.environ['CUDA_HOME'] = cuda_home
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    torch_cuda = torch.version.cuda is not None
    with_cuda = bool(cuda_home) and torch_cuda
    if mode == '1' and not with_cuda:
        missing = 'a CUDA toolkit (nvcc with libcudart)' if not cuda_home else \
            f'a CUDA-enabled torch (torch {torch.__version__} is CPU-only)'
        raise RuntimeError(f'DUALFORMER_CUDA=1 but {missing} was not found')
    if mode == 'auto' and not with_cuda:
        _log('building the CPU kernels only: ' + (
            'no CUDA toolkit (nvcc with libcudart) found' if not cuda_home else
            f'torch {torch.__version__} is CPU-only'))

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


setup(
    name='dualformer_mm',
    version='0.1.0',
    packages=find_packages(include=['dualformer_mm*']),
    ext_modules=_extensions(),
    cmdclass={'build_ext': _build_ext_class()},
    # Every source and header of the extension, so that an sdist (and a non-editable install,
    # which copies the package) can build it; tests/test_install.py checks the sdist.
    package_data={'dualformer_mm.ops': ['csrc/*.h', 'csrc/*.cpp', 'csrc/cpu/*.h',
                                        'csrc/cpu/*.cpp', 'csrc/cuda/*.cu', 'csrc/cuda/*.cuh']},
    zip_safe=False,
)
