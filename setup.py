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

Installing into an existing environment (docs/install.md, "Into your own OpenMMLab environment"):
``pip install --no-build-isolation .`` (or ``-e .``) compiles against the torch already there.
torch is required to be installed first and inside the supported range, checked here before
pip resolves anything, so pip never installs, upgrades or downgrades it; mmcv is no
requirement at all (an environment has mmcv or mmcv-lite; ``dualformer_mm.compat`` says which
to install when neither is importable).

The version and every supported version range come from ``dualformer_mm/version.py``, read by
its path: importing the package would need torch, mmengine and mmcv.
"""
import glob
import importlib.util
import os
import os.path as osp
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
CSRC = osp.join('dualformer_mm', 'ops', 'csrc')


def _load_by_path(name: str, rel: str):
    """A module of this checkout, loaded by its path: a PEP 517 build does not always put this
    folder on ``sys.path``, and ``dualformer_mm/__init__.py`` imports torch, mmengine and mmcv."""
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cuda_config = _load_by_path('dualformer_cuda_build', 'cuda_build.py')
versions = _load_by_path('dualformer_version', osp.join('dualformer_mm', 'version.py'))


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
            f'({err}): install torch {versions.TORCH.specifier} first, then `pip install '
            '--no-build-isolation .` (an isolated build would not see it)') from err
    if not versions.TORCH.contains(torch.__version__):
        raise RuntimeError(f'dualformer_mm supports torch {versions.TORCH.specifier}, found '
                           f'torch {torch.__version__}: install a supported torch first (this '
                           'build never changes the installed one)')
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


def _license_metadata() -> dict:
    """Apache-2.0 in the form the installed setuptools writes. From setuptools 77 (PEP 639): the
    SPDX ``License-Expression``, beside which setuptools refuses a license classifier (and
    without which it warns that the classifier is deprecated). Before: the ``License`` field and
    the trove classifier."""
    import setuptools
    if versions.release(setuptools.__version__) >= (77, ):
        return dict(license_expression='Apache-2.0', classifiers=[])
    return dict(license='Apache-2.0',
                classifiers=['License :: OSI Approved :: Apache Software License'])


def _classifiers(license_classifiers: list) -> list:
    pythons = range(versions.PYTHON.minimum[1],
                    versions.release(versions.PYTHON.tested[-1])[1] + 1)
    return license_classifiers + [
        'Development Status :: 3 - Alpha',
        'Intended Audience :: Developers',
        'Intended Audience :: Science/Research',
        'Operating System :: POSIX :: Linux',
        'Programming Language :: C++',
        'Programming Language :: Python :: 3',
    ] + [f'Programming Language :: Python :: 3.{minor}' for minor in pythons] + [
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ]


def _readme() -> str:
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        return f.read()


TOOLBOXES = {
    'mmpretrain': [versions.MMPRETRAIN.requirement],
    'mmdet': [versions.MMDET.requirement],
    'mmseg': [versions.MMSEG.requirement, 'ftfy', 'regex'],
}
# What the test suite imports beyond the package's own requirements; requirements/tests.txt
# pins a release of each (tests/test_metadata.py holds the two equal).
TESTS = ['pytest>=7', 'pytest-timeout>=2',
         # --dist worksteal (make test-fast, make test-compat): pytest-xdist 3.2.
         'pytest-xdist>=3.2',
         # ONNX export checks (tests/test_onnx_export.py): torch.onnx's torch.export-based
         # exporter needs onnxscript; ONNX Runtime runs the exported files.
         'onnx', 'onnxscript', 'onnxruntime',
         # The timm entry points (tests/test_timm.py).
         versions.TIMM.requirement,
         # Real photos for the mmdeploy parity tests (tests/test_mmdeploy.py).
         'scikit-image']
LICENSE_FIELDS = _license_metadata()

setup(
    name='dualformer_mm',
    version=versions.__version__,
    description='DualFormer (Dual Path Transformer with Partition Attention) for OpenMMLab 2.0',
    long_description=_readme(),
    long_description_content_type='text/markdown',
    author='dualformer-mm contributors',
    keywords='computer vision, vision transformer, backbone, image classification, object '
    'detection, semantic segmentation, OpenMMLab',
    classifiers=_classifiers(LICENSE_FIELDS.pop('classifiers')),
    **LICENSE_FIELDS,
    python_requires=versions.PYTHON.specifier,
    # torch: installed before the build (checked above), so pip only confirms it. mmcv: not
    # here (mmcv or mmcv-lite; dualformer_mm.compat.check_mmcv).
    install_requires=[versions.TORCH.requirement, versions.MMENGINE.requirement,
                      versions.NUMPY.requirement],
    extras_require=dict(TOOLBOXES, toolboxes=sorted({r for v in TOOLBOXES.values() for r in v}),
                        tests=TESTS),
    packages=find_packages(include=['dualformer_mm*']),
    ext_modules=_extensions(),
    cmdclass={'build_ext': _build_ext_class()},
    # Every source and header of the extension, so that an sdist (and a non-editable install,
    # which copies the package) can build it; tests/test_install.py checks the sdist.
    package_data={'dualformer_mm.ops': ['csrc/*.h', 'csrc/*.cpp', 'csrc/cpu/*.h',
                                        'csrc/cpu/*.cpp', 'csrc/cuda/*.cu', 'csrc/cuda/*.cuh']},
    zip_safe=False,
)
