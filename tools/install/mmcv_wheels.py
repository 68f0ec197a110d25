# Copyright (c) dualformer-mm contributors.
"""The mmcv wheel of our own install (``tools/setup_env.sh``): flavour, cache, check.

mmcv exists only as source for the torch we pin, so ``tools/setup_env.sh`` builds its wheel
and caches it outside the repository. This module decides the flavour and the cache folder,
finds a cached wheel (moving one of the earlier cache layout once), reads a wheel's flavour
from its libraries, and checks at the end of the install what each compiled package ended
with. The CUDA architectures follow the rule ``setup.py`` builds ``dualformer_mm._ext`` with
(``cuda_build.py`` beside it, loaded here by its path); like that file, this one imports only
the standard library at module level, because it runs before mmcv exists.

The mmcv flavour (:func:`mmcv_plan`): CUDA when a GPU is visible, or when
``DUALFORMER_MMCV_CUDA=1`` asks for it (a login node building for its GPU nodes); CPU
otherwise, or when ``DUALFORMER_MMCV_CUDA=0``. The wheel cache folder is named after torch,
Python, the flavour and the architectures (:func:`cache_key`), so a CPU wheel is never found by
a CUDA build.

Command line (used by ``tools/setup_env.sh``; every command prints shell assignments or one
line):

    python tools/install/mmcv_wheels.py mmcv-plan     # flavour, archs, cache key of mmcv
    python tools/install/mmcv_wheels.py find-wheel --wheels-root ~/.cache/dualformer-mm/wheels \
        --key torch-2.13.0-cp311-cpu --legacy-key torch-2.13.0-cp311 --flavour cpu \
        --mmcv-version 2.1.0                          # the cached wheel, or an empty line
    python tools/install/mmcv_wheels.py wheel-flavour dist/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl
    python tools/install/mmcv_wheels.py check-install # flavours of mmcv and our extension

Example:
    >>> cache_key('2.1.2', 'cp39', 'cpu')
    'torch-2.1.2-cp39-cpu'
"""
import argparse
import glob
import importlib.util
import os
import os.path as osp
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _load_cuda_build():
    """``cuda_build.py`` of the repository root, by its path (it is no installed module)."""
    name = 'dualformer_cuda_build'
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'cuda_build.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cuda_build = _load_cuda_build()
ArchChoice = cuda_build.ArchChoice
MMCV_CUDA_ENV = cuda_build.MMCV_CUDA_ENV
EXT_CUDA_ENV = cuda_build.EXT_CUDA_ENV


def cache_key(torch_version: str, python_tag: str, flavour: str,
              cuda_version: Optional[str] = None, archs: Optional[str] = None) -> str:
    """Folder name, under the wheel cache, of an mmcv wheel built this way.

    Args:
        torch_version (str): torch's version without the local part, e.g. ``'2.13.0'``.
        python_tag (str): e.g. ``'cp311'``.
        flavour (str): ``'cpu'`` or ``'cuda'``.
        cuda_version (str, optional): torch's CUDA version (``torch.version.cuda``); needed
            for ``'cuda'``.
        archs (str, optional): ``TORCH_CUDA_ARCH_LIST``; needed for ``'cuda'``.

    Returns:
        str: e.g. ``'torch-2.13.0-cp311-cpu'`` or ``'torch-2.13.0-cp311-cuda13.0-9.0'``
        (architectures sorted, joined by ``_``).

    Example:
        >>> cache_key('2.13.0', 'cp311', 'cuda', '13.0', '9.0+PTX;8.0')
        'torch-2.13.0-cp311-cuda13.0-8.0_9.0+PTX'
    """
    base = f'torch-{torch_version}-{python_tag}'
    if flavour == 'cpu':
        return f'{base}-cpu'
    if flavour != 'cuda' or not cuda_version or not archs:
        raise ValueError(f"flavour must be 'cpu', or 'cuda' with cuda_version and archs; got "
                         f'{flavour!r}, {cuda_version!r}, {archs!r}')
    tokens = sorted(set(cuda_build.check_arch_list(archs)),
                    key=lambda t: (cuda_build.arch_key(t) if t[0].isdigit() else (999, 0), t))
    return f'{base}-cuda{cuda_version}-' + '_'.join(tokens)


# The cache folder of setup_env.sh before the key named the flavour: it only ever held CPU
# wheels (the script then always built with FORCE_CUDA=0).
def legacy_cache_key(torch_version: str, python_tag: str) -> str:
    """Folder name of the CPU wheel cache before flavours were keyed (always CPU wheels)."""
    return f'torch-{torch_version}-{python_tag}'


@dataclass(frozen=True)
class MmcvPlan:
    """What ``tools/setup_env.sh`` builds for mmcv, and why.

    Attributes:
        flavour (str): ``'cuda'`` or ``'cpu'``.
        reason (str): Why this flavour, for the log.
        cache_key (str): Folder of the wheel cache (see :func:`cache_key`).
        archs (ArchChoice, optional): The architectures, for ``'cuda'``.

    Example:
        >>> MmcvPlan('cpu', 'no GPU', 'torch-2.1.2-cp39-cpu').archs is None
        True
    """

    flavour: str
    reason: str
    cache_key: str
    archs: Optional[ArchChoice] = None


def mmcv_plan(torch_version: str, python_tag: str, environ: Optional[Mapping[str, str]] = None,
              gpu_capabilities: Optional[Sequence[Tuple[int, int]]] = None,
              torch_cuda: Optional[str] = '', torch_arch_list: Optional[Sequence[str]] = None
              ) -> MmcvPlan:
    """The mmcv flavour to build, its architectures and its cache folder.

    Args:
        torch_version (str): Installed torch's version without local part.
        python_tag (str): e.g. ``'cp311'``.
        environ (Mapping[str, str], optional): Environment (``DUALFORMER_MMCV_CUDA``,
            ``TORCH_CUDA_ARCH_LIST``); ``os.environ`` when None.
        gpu_capabilities (Sequence[Tuple[int, int]], optional): The visible GPUs; asked from
            torch when None (``[]`` means none visible).
        torch_cuda (str, optional): ``torch.version.cuda`` (None for a CPU-only torch); asked
            from torch when ``''``.
        torch_arch_list (Sequence[str], optional): ``torch.cuda.get_arch_list()``; asked from
            torch when None.

    Returns:
        MmcvPlan: The decision.

    Raises:
        ValueError: ``DUALFORMER_MMCV_CUDA`` is not ``auto``, ``1`` or ``0``, or the CUDA
            flavour is asked for with a CPU-only torch.

    Example:
        >>> mmcv_plan('2.13.0', 'cp311', {}, [], '13.0', ['sm_90']).cache_key
        'torch-2.13.0-cp311-cpu'
        >>> mmcv_plan('2.13.0', 'cp311', {}, [(9, 0)], '13.0', ['sm_90']).cache_key
        'torch-2.13.0-cp311-cuda13.0-9.0'
    """
    environ = os.environ if environ is None else environ
    mode = cuda_build.read_mode(environ, MMCV_CUDA_ENV)
    if gpu_capabilities is None:
        gpu_capabilities = cuda_build.query_gpu_capabilities() if mode != '0' else []
    if torch_cuda == '':
        import torch
        torch_cuda = torch.version.cuda
    if mode == '0':
        reason = f'{MMCV_CUDA_ENV}=0'
        if gpu_capabilities:
            reason += ' (a GPU is visible: detection and segmentation ops will not run on it)'
        return MmcvPlan('cpu', reason, cache_key(torch_version, python_tag, 'cpu'))
    if mode == 'auto' and not gpu_capabilities:
        return MmcvPlan('cpu', f'no CUDA GPU is visible; {MMCV_CUDA_ENV}=1 builds the CUDA '
                        'flavour for other machines',
                        cache_key(torch_version, python_tag, 'cpu'))
    why = 'a CUDA GPU is visible' if mode == 'auto' else f'{MMCV_CUDA_ENV}=1'
    if not torch_cuda:
        raise ValueError(f'the CUDA flavour of mmcv is wanted ({why}) but torch '
                         f'{torch_version} is CPU-only; install a CUDA build of torch or set '
                         f'{MMCV_CUDA_ENV}=0')
    archs = cuda_build.choose_archs(environ, gpu_capabilities, torch_arch_list)
    if archs is None:
        raise ValueError(f'the CUDA flavour of mmcv is wanted ({why}) but torch lists no CUDA '
                         f'architecture; set {cuda_build.ARCH_ENV}')
    return MmcvPlan('cuda', why, cache_key(torch_version, python_tag, 'cuda', torch_cuda,
                                           archs.archs), archs)


# ---------------------------------------------------------------------------------------------
# What was built


# Shared libraries that only a CUDA build of a torch extension links against.
CUDA_LIBRARIES = (b'libcudart.so', b'libc10_cuda.so', b'libtorch_cuda.so')


def library_has_cuda(data: bytes) -> bool:
    """Whether a compiled extension's bytes name a CUDA library (its ELF ``NEEDED`` entries).

    Example:
        >>> library_has_cuda(b'libc10.so\\0libc10_cuda.so\\0'), library_has_cuda(b'libc10.so')
        (True, False)
    """
    return any(name in data for name in CUDA_LIBRARIES)


def wheel_flavour(path: str) -> str:
    """The flavour of an mmcv wheel: ``'cuda'``, ``'cpu'``, or ``'lite'`` (no compiled ops).

    Args:
        path (str): A ``.whl`` file.

    Returns:
        str: From the ``mmcv/_ext*.so`` inside the wheel, without installing or importing it.
    """
    with zipfile.ZipFile(path) as whl:
        exts = [n for n in whl.namelist() if re.match(r'mmcv/_ext[.\w-]*\.so$', n)]
        if not exts:
            return 'lite'
        return 'cuda' if library_has_cuda(whl.read(exts[0])) else 'cpu'


def _log(msg: str) -> None:
    print(f'[setup] {msg}', file=sys.stderr)


def find_cached_wheel(wheels_root: str, plan_key: str, flavour: str, legacy_key: str,
                      mmcv_version: str, log: Callable[[str], None] = _log) -> Optional[str]:
    """The cached mmcv wheel of a plan, or None when it must be built.

    A CPU plan whose folder is empty takes the wheel of the folder of the earlier layout
    (``legacy_key``), which only ever held CPU wheels, by moving it once. A wheel whose
    libraries say another flavour than its folder is an error, never used.

    Args:
        wheels_root (str): ``<cache>/wheels``.
        plan_key (str): :attr:`MmcvPlan.cache_key`.
        flavour (str): :attr:`MmcvPlan.flavour`.
        legacy_key (str): :func:`legacy_cache_key`.
        mmcv_version (str): e.g. ``'2.1.0'``.
        log (Callable[[str], None]): Where the migration is reported.

    Returns:
        Optional[str]: Path of the wheel.

    Raises:
        ValueError: The cached wheel has other ops than ``flavour``.
    """
    def wheels(folder: str) -> List[str]:
        return sorted(glob.glob(osp.join(wheels_root, folder, f'mmcv-{mmcv_version}-*.whl')))

    found = wheels(plan_key)
    if not found and flavour == 'cpu' and wheels(legacy_key):
        os.makedirs(osp.join(wheels_root, plan_key), exist_ok=True)
        old = wheels(legacy_key)[0]
        new = osp.join(wheels_root, plan_key, osp.basename(old))
        log(f'moving the CPU wheel of the former cache folder {osp.dirname(old)} to '
            f'{osp.dirname(new)}')
        shutil.move(old, new)
        try:
            os.rmdir(osp.dirname(old))
        except OSError:
            pass  # other files are left where they are
        found = [new]
    if not found:
        return None
    got = wheel_flavour(found[0])
    if got != flavour:
        raise ValueError(f'the cached {found[0]} has {got} ops but sits in the cache folder of '
                         f'the {flavour} flavour; delete it and rerun to build it again')
    return found[0]


def installed_flavours() -> Dict[str, Optional[str]]:
    """What the installed packages were compiled with, asked from the packages themselves.

    Returns:
        Dict[str, Optional[str]]: ``mmcv`` (mmcv's version), ``mmcv_cuda`` (the CUDA version
        mmcv's ops were compiled with, None for CPU-only ops; ``'lite'`` when mmcv has no
        compiled ops), ``ext_cuda`` (``'yes'``/``'no'`` for ``dualformer_mm._ext``, or the
        import error), ``gpus`` (visible GPUs, as ``'name (sm_XY)'``, comma-separated).
    """
    import torch  # mmcv._ext links against libtorch: load it first
    out: Dict[str, Optional[str]] = {}
    try:
        import mmcv
        out['mmcv'] = mmcv.__version__
    except ImportError as err:
        out['mmcv'] = None
        out['mmcv_error'] = str(err)
    try:
        # mmcv.ops' own report of its compiled ext: 'not available' without CUDA kernels.
        from mmcv import _ext
        version = _ext.get_compiling_cuda_version()
        out['mmcv_cuda'] = None if version == 'not available' else version
    except ImportError:
        out['mmcv_cuda'] = 'lite'
    try:
        from dualformer_mm import _ext as ours
        out['ext_cuda'] = 'yes' if ours.with_cuda() else 'no'
    except ImportError as err:
        out['ext_cuda'] = f'cannot import dualformer_mm._ext ({err})'
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append(f'{torch.cuda.get_device_name(i)} (sm_{major}{minor})')
    out['gpus'] = ', '.join(gpus)
    return out


def check_install(flavours: Mapping[str, Optional[str]],
                  environ: Optional[Mapping[str, str]] = None) -> Tuple[List[str], List[str]]:
    """The end-of-setup report: lines to print, and errors that fail the install.

    A machine with a visible GPU that ends with CPU-only mmcv ops or a CPU-only
    ``dualformer_mm._ext`` is an error (Mask R-CNN's RoIAlign and NMS then cannot run on the
    GPU), unless ``DUALFORMER_MMCV_CUDA=0`` / ``DUALFORMER_CUDA=0`` asked for CPU builds.

    Args:
        flavours (Mapping): Output of :func:`installed_flavours`.
        environ (Mapping[str, str], optional): Environment; ``os.environ`` when None.

    Returns:
        Tuple[List[str], List[str]]: Report lines and error lines.

    Example:
        >>> check_install({'mmcv': '2.1.0', 'mmcv_cuda': None, 'ext_cuda': 'no',
        ...                'gpus': 'H200 (sm_90)'}, {})[1][0][:40]
        'a CUDA GPU is visible (H200 (sm_90)) but'
    """
    environ = os.environ if environ is None else environ
    mmcv_cuda, ext_cuda, gpus = flavours.get('mmcv_cuda'), flavours.get('ext_cuda'), \
        flavours.get('gpus')
    if flavours.get('mmcv') is None:
        mmcv_line = f'mmcv: not importable ({flavours.get("mmcv_error")})'
    elif mmcv_cuda == 'lite':
        mmcv_line = f'mmcv {flavours["mmcv"]}: no compiled ops (mmcv-lite)'
    elif mmcv_cuda:
        mmcv_line = f'mmcv {flavours["mmcv"]}: CUDA ops (compiled with CUDA {mmcv_cuda})'
    else:
        mmcv_line = f'mmcv {flavours["mmcv"]}: CPU-only ops'
    ext_line = {'yes': 'dualformer_mm._ext: CPU and CUDA kernels',
                'no': 'dualformer_mm._ext: CPU kernels only'}.get(ext_cuda,
                                                                 f'dualformer_mm._ext: {ext_cuda}')
    lines = [mmcv_line, ext_line, f'visible GPUs: {gpus or "none"}']
    errors = []
    if gpus:
        if mmcv_cuda in (None, 'lite') and cuda_build.read_mode(environ, MMCV_CUDA_ENV) != '0':
            errors.append(f'a CUDA GPU is visible ({gpus}) but mmcv has no CUDA ops, so '
                          'RoIAlign, NMS and the other mmcv ops of detection cannot run on it. '
                          'Its wheel was built without CUDA: remove the CPU wheel from the '
                          'cache if one was copied in, check that nvcc matches torch.version.'
                          f'cuda, and rerun; {MMCV_CUDA_ENV}=0 accepts CPU-only ops')
        if ext_cuda != 'yes' and cuda_build.read_mode(environ, EXT_CUDA_ENV) != '0':
            errors.append(f'a CUDA GPU is visible ({gpus}) but dualformer_mm._ext has no CUDA '
                          'kernels (no nvcc with libcudart was found when it was built), so '
                          'the partition ops run their slower PyTorch reference on the GPU; '
                          f'install the CUDA toolkit and rerun, or set {EXT_CUDA_ENV}=0')
    return lines, errors


# ---------------------------------------------------------------------------------------------
# Command line for tools/setup_env.sh


def _cmd_mmcv_plan(args: argparse.Namespace) -> int:
    cuda_build.read_mode(os.environ, MMCV_CUDA_ENV)  # a bad value is reported before torch
    if args.torch_version is None:
        import torch
        args.torch_version = torch.__version__.split('+')[0]
    python_tag = args.python_tag or f'cp{sys.version_info[0]}{sys.version_info[1]}'
    plan = mmcv_plan(args.torch_version, python_tag)
    values = {'MMCV_FLAVOUR': plan.flavour, 'MMCV_REASON': plan.reason,
              'MMCV_CACHE_KEY': plan.cache_key,
              'MMCV_LEGACY_CACHE_KEY': legacy_cache_key(args.torch_version, python_tag),
              'MMCV_ARCHS': plan.archs.archs if plan.archs else '',
              'MMCV_ARCH_DESCRIPTION': plan.archs.describe() if plan.archs else '',
              'MMCV_CUDA_HOME': '', 'MMCV_CUDA_INCLUDES': ''}
    if plan.flavour == 'cuda' and not args.no_toolkit:
        home = cuda_build.cuda_home()
        if home is None:
            raise ValueError(f'the CUDA flavour of mmcv is wanted ({plan.reason}) but no CUDA '
                             'toolkit (nvcc with libcudart) was found; install the toolkit '
                             "that matches torch.version.cuda, or set "
                             f'{MMCV_CUDA_ENV}=0 to build the CPU flavour')
        values['MMCV_CUDA_HOME'] = home
        values['MMCV_CUDA_INCLUDES'] = ':'.join(cuda_build.extra_cuda_includes(home))
    print(cuda_build.assignments(values))
    return 0


def _cmd_find_wheel(args: argparse.Namespace) -> int:
    path = find_cached_wheel(args.wheels_root, args.key, args.flavour, args.legacy_key,
                             args.mmcv_version)
    print(path or '')
    return 0


def _cmd_wheel_flavour(args: argparse.Namespace) -> int:
    print(wheel_flavour(args.wheel))
    return 0


def _cmd_check_install(args: argparse.Namespace) -> int:
    lines, errors = check_install(installed_flavours())
    for line in lines:
        print(f'[setup] {line}')
    for error in errors:
        print(f'[setup] ERROR: {error}', file=sys.stderr)
    return 1 if errors else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; prints shell assignments (``KEY='value'``) or one line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    plan = sub.add_parser('mmcv-plan', help='flavour, architectures and cache key of mmcv')
    plan.add_argument('--torch-version', help="torch's version without local part (default: "
                      'the installed one)')
    plan.add_argument('--python-tag', help='e.g. cp311 (default: this interpreter)')
    plan.add_argument('--no-toolkit', action='store_true',
                      help='do not look for the CUDA toolkit (print the decision only)')
    find = sub.add_parser('find-wheel', help='the cached mmcv wheel of a plan (empty: none)')
    for name in ('--wheels-root', '--key', '--legacy-key', '--mmcv-version'):
        find.add_argument(name, required=True)
    find.add_argument('--flavour', required=True, choices=('cpu', 'cuda'))
    flavour = sub.add_parser('wheel-flavour', help='cuda, cpu or lite, read from an mmcv wheel')
    flavour.add_argument('wheel')
    sub.add_parser('check-install', help='flavours of the installed mmcv and dualformer_mm._ext')
    args = parser.parse_args(argv)
    commands: Dict[str, Callable[[argparse.Namespace], int]] = {
        'mmcv-plan': _cmd_mmcv_plan, 'find-wheel': _cmd_find_wheel,
        'wheel-flavour': _cmd_wheel_flavour, 'check-install': _cmd_check_install}
    try:
        return commands[args.command](args)
    except (ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
