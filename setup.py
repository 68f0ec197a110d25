# Copyright (c) dualformer-mm contributors.
"""Package metadata and the build of ``dualformer_mm._ext``, the fused partition ops of MHPA
(paper section 3.2; sources in ``dualformer_mm/ops/csrc``, design in ``docs/ops.md``).

The CPU (OpenMP) kernels are always compiled. The CUDA kernels are compiled in as well whenever
a CUDA toolkit (``nvcc``) and a CUDA-enabled torch are both present. A failed compile fails the
install: nothing here catches build errors.

Environment:
    DUALFORMER_CUDA: ``auto`` (default) builds CUDA when possible, ``1`` requires it (an error
        names what is missing), ``0`` builds the CPU kernels only.
    TORCH_CUDA_ARCH_LIST: GPU architectures; defaults to ``8.0;9.0`` (sm_80 and sm_90), since
        a build machine without a GPU has none to detect.
    CUDA_HOME: the toolkit; derived from ``nvcc`` when unset or wrong (see ``_cuda_home``).
    MAX_JOBS: parallel compile jobs (ninja).
"""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
from typing import List, Optional

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
CSRC = osp.join('dualformer_mm', 'ops', 'csrc')
DEFAULT_ARCHS = '8.0;9.0'


def _log(msg: str) -> None:
    print(f'[dualformer_mm setup] {msg}', file=sys.stderr)


def _has_cudart(home: str) -> bool:
    """Whether ``home`` is a toolkit folder that holds the CUDA runtime to link against."""
    patterns = ('lib64/libcudart*', 'lib/libcudart*', 'targets/*/lib/libcudart*')
    return any(glob.glob(osp.join(home, p)) for p in patterns)


def _nvcc_home(nvcc: str) -> Optional[str]:
    """The toolkit folder of ``nvcc``, asked from nvcc itself.

    ``nvcc`` on PATH may be a wrapper script (``exec /usr/local/cuda-X/bin/nvcc``), so its own
    location says nothing; its dry run prints the real bin folder as ``_HERE_``.
    """
    try:
        # A dry run of a compile prints nvcc's environment (a dry `--version` does not).
        out = subprocess.run([nvcc, '-dryrun', '-c', '-x', 'cu', os.devnull, '-o', os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        _log(f'cannot run {nvcc}: {err}')
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith('#$ _HERE_='):
            return osp.dirname(osp.realpath(line.split('=', 1)[1].strip()))
    return osp.dirname(osp.dirname(osp.realpath(nvcc)))


def _cuda_home() -> Optional[str]:
    """A CUDA toolkit folder holding both ``bin/nvcc`` and the runtime library, or None.

    ``CUDA_HOME``/``CUDA_PATH`` win when they are valid. Otherwise the toolkit is the one of the
    ``nvcc`` on PATH, found through nvcc's dry run (torch guesses the parent of the PATH entry,
    which fails to link ``-lcudart`` when nvcc is a wrapper outside the toolkit).
    """
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        home = os.environ.get(var)
        if home and osp.isfile(osp.join(home, 'bin', 'nvcc')) and _has_cudart(home):
            return home
        if home:
            _log(f'ignoring {var}={home}: no bin/nvcc or libcudart there')
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        return None
    home = _nvcc_home(nvcc)
    if home and osp.isfile(osp.join(home, 'bin', 'nvcc')) and _has_cudart(home):
        return home
    _log(f'found {nvcc} but no toolkit with libcudart next to it (tried {home})')
    return None


def _extra_cuda_includes(home: str) -> List[str]:
    """Header folders that torch's CUDA headers need and the toolkit at ``home`` lacks.

    Toolkits installed without the math libraries have no ``cusparse.h``, which
    ``ATen/cuda/CUDAContext.h`` includes; the ``nvidia-*`` wheels torch depends on ship it
    under ``site-packages/nvidia/<pkg>/include``.
    """
    if glob.glob(osp.join(home, 'include', 'cusparse.h')) or \
            glob.glob(osp.join(home, 'targets', '*', 'include', 'cusparse.h')):
        return []
    import importlib.util
    spec = importlib.util.find_spec('nvidia')
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    found = sorted({osp.dirname(h) for r in roots for h in glob.glob(osp.join(r, '*', 'include',
                                                                            'cusparse.h'))})
    if not found:
        raise RuntimeError(f'cusparse.h is neither in the CUDA toolkit {home} nor in an nvidia-* '
                           'wheel of site-packages; torch\'s CUDA headers need it. Install '
                           'the toolkit\'s cusparse headers or set DUALFORMER_CUDA=0.')
    return found[:1]


def _extensions() -> list:
    """The ``dualformer_mm._ext`` extension, with CUDA when the machine can build it."""
    mode = os.environ.get('DUALFORMER_CUDA', 'auto').lower()
    if mode not in ('auto', '1', '0'):
        raise ValueError(f'DUALFORMER_CUDA must be auto, 1 or 0, got {mode!r}')
    cuda_home = _cuda_home() if mode != '0' else None
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
    os.environ.setdefault('TORCH_CUDA_ARCH_LIST', DEFAULT_ARCHS)
    _log(f'building CPU and CUDA kernels with CUDA_HOME={cuda_home}, '
         f'TORCH_CUDA_ARCH_LIST={os.environ["TORCH_CUDA_ARCH_LIST"]}')
    sources += sorted(glob.glob(osp.join(CSRC, 'cuda', '*.cu')))
    return [CUDAExtension(
        'dualformer_mm._ext', sources, define_macros=[('WITH_CUDA', None)],
        include_dirs=_extra_cuda_includes(cuda_home),
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
    package_data={'dualformer_mm.ops': ['csrc/*.h', 'csrc/*.cpp', 'csrc/cpu/*.cpp',
                                        'csrc/cuda/*.cu', 'csrc/cuda/*.cuh']},
    zip_safe=False,
)
