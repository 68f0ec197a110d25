# Copyright (c) dualformer-mm contributors.
"""How CUDA code is built here: the architecture rule and the toolkit, for ``setup.py``.

``setup.py`` loads this file by its path (it sits beside it, and ships in the sdist), and so
does ``tools/install/mmcv_wheels.py``, which builds mmcv's ops by the same rule. It imports
only the standard library at module level; torch is imported inside the functions that query
it, and every query can be passed in instead, which is how the tests cover the GPU cases on a
machine without one.

The architecture rule (:func:`choose_archs`), the value of ``TORCH_CUDA_ARCH_LIST``:

1. ``TORCH_CUDA_ARCH_LIST`` set by the user wins, unchanged.
2. Else, with a CUDA GPU visible, the architectures of the visible GPUs (a GPU newer than the
   newest architecture of the installed torch gets that newest one with PTX, which its driver
   compiles at load time).
3. Else every architecture of the installed torch (``torch.cuda.get_arch_list()``), with PTX
   for the newest, so GPUs newer than all of them can still JIT-compile the kernels.

Whether ``dualformer_mm._ext`` gets CUDA kernels at all (:func:`extension_cuda_plan`): when
``DUALFORMER_CUDA`` is not ``0``, torch is a CUDA build, a toolkit is found
(:func:`cuda_home`) and its nvcc has the CUDA major version torch was built with.

Command line:

    python cuda_build.py archs      # TORCH_CUDA_ARCH_LIST by the rule, as shell assignments
    python cuda_build.py toolkit    # CUDA_HOME and nvcc's version, as shell assignments

Example:
    >>> choose_archs(environ={}, gpu_capabilities=[], torch_arch_list=['sm_80', 'sm_90'])
    ArchChoice(archs='8.0;9.0+PTX', source='torch')
"""
import argparse
import glob
import hashlib
import importlib.util
import os
import os.path as osp
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

ARCH_ENV = 'TORCH_CUDA_ARCH_LIST'
EXT_CUDA_ENV = 'DUALFORMER_CUDA'
MMCV_CUDA_ENV = 'DUALFORMER_MMCV_CUDA'
MODES = ('auto', '1', '0')

# One entry of TORCH_CUDA_ARCH_LIST: '9.0', '9.0a', '12.0+PTX', or one of torch's named
# families ('Hopper', 'Ampere+Tegra', ...), which torch expands itself.
_ARCH_TOKEN = re.compile(r'^(\d+\.\d+[af]?|[A-Z][a-z]+(\+[A-Z][a-z]+)?)(\+PTX)?$')
_SM_NAME = re.compile(r'^sm_(\d+)(\d)([af]?)$')


def read_mode(environ: Mapping[str, str], name: str) -> str:
    """The value of an ``auto``/``1``/``0`` switch such as ``DUALFORMER_CUDA``.

    Args:
        environ (Mapping[str, str]): The environment.
        name (str): The variable; unset or empty means ``auto``.

    Raises:
        ValueError: Another value, named with the accepted ones.

    Example:
        >>> read_mode({'DUALFORMER_CUDA': '0'}, 'DUALFORMER_CUDA')
        '0'
    """
    mode = environ.get(name, 'auto').strip().lower() or 'auto'
    if mode not in MODES:
        raise ValueError(f'{name} must be one of {", ".join(MODES)}, got {environ[name]!r}')
    return mode


@dataclass(frozen=True)
class ArchChoice:
    """A value for ``TORCH_CUDA_ARCH_LIST`` and which case of the rule chose it.

    Attributes:
        archs (str): ``;``-separated architectures, e.g. ``'9.0'`` or ``'8.0;9.0+PTX'``.
        source (str): ``'user'`` (``TORCH_CUDA_ARCH_LIST`` was set), ``'gpu'`` (the visible
            GPUs) or ``'torch'`` (every architecture of the installed torch).

    Example:
        >>> ArchChoice('9.0', 'gpu').describe()
        '9.0 (the visible GPU(s))'
    """

    archs: str
    source: str

    def describe(self) -> str:
        """One line for a build log, e.g. ``9.0 (the visible GPU(s))``."""
        why = {'user': f'{ARCH_ENV} as set by the user', 'gpu': 'the visible GPU(s)',
               'torch': 'every architecture of the installed torch, PTX for the newest'}
        return f'{self.archs} ({why[self.source]})'


def sm_to_arch(name: str) -> Optional[str]:
    """``torch.cuda.get_arch_list()`` entry to ``TORCH_CUDA_ARCH_LIST`` form.

    Args:
        name (str): ``'sm_90'``, ``'sm_100'``, ``'sm_90a'`` or ``'compute_90'``.

    Returns:
        Optional[str]: ``'9.0'``, ``'10.0'``, ``'9.0a'``; None for a ``compute_`` (PTX-only)
        entry, which names no GPU code.

    Example:
        >>> sm_to_arch('sm_120'), sm_to_arch('compute_90')
        ('12.0', None)
    """
    match = _SM_NAME.match(name)
    if not match:
        return None
    return f'{int(match.group(1))}.{match.group(2)}{match.group(3)}'


def arch_key(arch: str) -> Tuple[int, int]:
    """Sort key of an architecture entry: ``'9.0a'`` and ``'9.0+PTX'`` give ``(9, 0)``."""
    major, minor = re.match(r'(\d+)\.(\d+)', arch).groups()
    return int(major), int(minor)


def query_gpu_capabilities() -> List[Tuple[int, int]]:
    import torch
    if not torch.cuda.is_available():
        return []
    return [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]


def query_torch_arch_list() -> List[str]:
    """The architectures the installed torch was compiled for (``['sm_80', ...]``).

    Read where ``torch.cuda.get_arch_list()`` reads them, because on torch 2.1 that function
    returns ``[]`` unless a GPU is visible (newer torch answers without one), and a build
    machine often has none.
    """
    import torch
    if torch.version.cuda is None:
        return []
    flags = torch._C._cuda_getArchFlags()
    return flags.split() if flags else []


def check_arch_list(value: str) -> List[str]:
    """The entries of a ``TORCH_CUDA_ARCH_LIST`` value, or a ValueError naming the bad one.

    Args:
        value (str): Entries separated by ``;`` or spaces.

    Returns:
        List[str]: The entries in the given order.

    Example:
        >>> check_arch_list('8.0; 9.0+PTX')
        ['8.0', '9.0+PTX']
    """
    tokens = [t for t in re.split(r'[;\s]+', value.strip()) if t]
    bad = [t for t in tokens if not _ARCH_TOKEN.match(t)]
    if not tokens or bad:
        raise ValueError(f'{ARCH_ENV}={value!r}: {bad or "no entry"} is not an architecture; '
                         "accepted: entries like '8.0', '9.0a', '12.0+PTX' or torch's family "
                         "names ('Hopper', 'Ampere+PTX'), separated by ';' or spaces")
    return tokens


def choose_archs(environ: Optional[Mapping[str, str]] = None,
                 gpu_capabilities: Optional[Sequence[Tuple[int, int]]] = None,
                 torch_arch_list: Optional[Sequence[str]] = None) -> Optional[ArchChoice]:
    """The CUDA architectures to compile for (the rule of the module docstring).

    Args:
        environ (Mapping[str, str], optional): Environment; ``os.environ`` when None.
        gpu_capabilities (Sequence[Tuple[int, int]], optional): Compute capabilities of the
            visible GPUs, e.g. ``[(9, 0)]``; asked from torch when None.
        torch_arch_list (Sequence[str], optional): ``torch.cuda.get_arch_list()``; asked from
            torch when None.

    Returns:
        Optional[ArchChoice]: None when nothing can be chosen: no user list, no GPU and a
        torch without CUDA architectures (a CPU-only torch).

    Example:
        >>> choose_archs({'TORCH_CUDA_ARCH_LIST': '9.0'}, [(8, 6)], ['sm_80'])
        ArchChoice(archs='9.0', source='user')
        >>> choose_archs({}, [(8, 6), (8, 6)], ['sm_80', 'sm_86', 'sm_90'])
        ArchChoice(archs='8.6', source='gpu')
    """
    environ = os.environ if environ is None else environ
    user = environ.get(ARCH_ENV, '').strip()
    if user:
        check_arch_list(user)
        return ArchChoice(user, 'user')
    if gpu_capabilities is None:
        gpu_capabilities = query_gpu_capabilities()
    if torch_arch_list is None:
        torch_arch_list = query_torch_arch_list()
    torch_archs = sorted({a for a in map(sm_to_arch, torch_arch_list) if a}, key=arch_key)
    # Newest architecture without an 'a'/'f' suffix: only plain PTX runs on newer GPUs.
    portable = [a for a in torch_archs if a[-1].isdigit()]
    newest = portable[-1] if portable else None
    if gpu_capabilities:
        archs = []
        for major, minor in sorted(set(map(tuple, gpu_capabilities))):
            arch = f'{major}.{minor}'
            if newest and arch_key(arch) > arch_key(newest):
                # The toolkit that matches this torch may not know the GPU: torch's newest
                # architecture with PTX runs on it through the driver's JIT.
                arch = f'{newest}+PTX'
            if arch not in archs:
                archs.append(arch)
        return ArchChoice(';'.join(archs), 'gpu')
    if not torch_archs:
        return None
    return ArchChoice(';'.join(a + '+PTX' if a == newest else a for a in torch_archs), 'torch')


# ---------------------------------------------------------------------------------------------
# The CUDA toolkit


def _log(msg: str) -> None:
    print(f'[dualformer_mm cuda] {msg}', file=sys.stderr)


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


def cuda_home(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """A CUDA toolkit folder holding both ``bin/nvcc`` and the runtime library, or None.

    ``CUDA_HOME``/``CUDA_PATH`` win when they are valid. Otherwise the toolkit is the one of the
    ``nvcc`` on PATH, found through nvcc's dry run (torch guesses the parent of the PATH entry,
    which fails to link ``-lcudart`` when nvcc is a wrapper outside the toolkit).

    Example:
        >>> home = cuda_home()  # e.g. '/usr/local/cuda-13.0', or None without nvcc
    """
    environ = os.environ if environ is None else environ
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        home = environ.get(var)
        if home and osp.isfile(osp.join(home, 'bin', 'nvcc')) and _has_cudart(home):
            return home
        if home:
            _log(f'ignoring {var}={home}: no bin/nvcc or libcudart there')
    nvcc = shutil.which('nvcc', path=environ.get('PATH'))
    if nvcc is None:
        return None
    home = _nvcc_home(nvcc)
    if home and osp.isfile(osp.join(home, 'bin', 'nvcc')) and _has_cudart(home):
        return home
    _log(f'found {nvcc} but no toolkit with libcudart next to it (tried {home})')
    return None


def nvcc_version(home: str) -> Optional[str]:
    """The CUDA release of ``home/bin/nvcc`` (``'12.1'``), or None when it does not answer.

    Example:
        >>> nvcc_version('/nonexistent') is None
        True
    """
    try:
        out = subprocess.run([osp.join(home, 'bin', 'nvcc'), '--version'], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'release (\d+\.\d+)', out)
    return match.group(1) if match else None


def extension_cuda_plan(mode: str, torch_version: str, torch_cuda: Optional[str],
                        home: Optional[str], nvcc: Optional[str]) -> Tuple[bool, str]:
    """Whether ``dualformer_mm._ext`` gets CUDA kernels, and why (one line for the log).

    torch's extension builder refuses an nvcc of another CUDA major than torch's in the middle
    of the build (``CUDA_MISMATCH_MESSAGE`` of ``torch.utils.cpp_extension``) and only warns on
    another minor, so the decision is taken here, before the build, by the major.

    Args:
        mode (str): ``DUALFORMER_CUDA`` (``'auto'``, ``'1'`` or ``'0'``).
        torch_version (str): ``torch.__version__``.
        torch_cuda (str, optional): ``torch.version.cuda``; None for a CPU-only torch.
        home (str, optional): :func:`cuda_home`; None when no toolkit was found.
        nvcc (str, optional): :func:`nvcc_version` of that toolkit.

    Returns:
        Tuple[bool, str]: CUDA or not, and the reason.

    Raises:
        RuntimeError: ``mode == '1'`` and CUDA cannot be built; the message names what is
            missing.

    Example:
        >>> extension_cuda_plan('auto', '2.1.2+cu121', '12.1', '/opt/cuda-13', '13.0')[1]
        'nvcc 13.0 at /opt/cuda-13 does not match torch 2.1.2+cu121 (CUDA 12.1)'
    """
    if mode not in MODES:
        raise ValueError(f'{EXT_CUDA_ENV} must be one of {", ".join(MODES)}, got {mode!r}')
    if mode == '0':
        return False, f'{EXT_CUDA_ENV}=0'
    if torch_cuda is None:
        reason = f'torch {torch_version} is CPU-only'
    elif home is None:
        reason = 'no CUDA toolkit (nvcc with libcudart) found'
    elif nvcc is None or nvcc.split('.')[0] != torch_cuda.split('.')[0]:
        reason = (f'nvcc {nvcc or "(no version)"} at {home} does not match torch '
                  f'{torch_version} (CUDA {torch_cuda})')
    else:
        return True, f'nvcc {nvcc} at {home}, torch {torch_version} (CUDA {torch_cuda})'
    if mode == '1':
        raise RuntimeError(f'{EXT_CUDA_ENV}=1 but the CUDA kernels cannot be built: {reason}')
    return False, reason


def _toolkit_include(home: str) -> Optional[str]:
    """The header folder of the toolkit at ``home`` (``include`` or ``targets/*/include``)."""
    found = [d for d in [osp.join(home, 'include')] +
             sorted(glob.glob(osp.join(home, 'targets', '*', 'include'))) if osp.isdir(d)]
    return found[0] if found else None


def extra_cuda_includes(home: str, nvidia_roots: Optional[Sequence[str]] = None,
                        shim_root: Optional[str] = None) -> List[str]:
    """A header folder with what torch's CUDA headers need and the toolkit at ``home`` lacks.

    Toolkits installed without the math libraries have no ``cusparse.h``, which
    ``ATen/cuda/CUDAContext.h`` includes; the ``nvidia-*`` wheels torch depends on ship it
    under ``site-packages/nvidia/<pkg>/include`` (``nvidia/cu13/include`` for CUDA 13). That
    folder also holds every header of the toolkit, of torch's CUDA release, which may be
    another minor than the toolkit's nvcc (torch 2.15 is built with CUDA 13.2): first on the
    include path they would shadow the toolkit's own and the compile stops ("CUDA compiler and
    CUDA toolkit headers are incompatible"). So the returned folder holds links to only the
    entries the toolkit lacks.

    Args:
        home (str): The toolkit (:func:`cuda_home`).
        nvidia_roots (Sequence[str], optional): Folders holding ``<pkg>/include``; the
            ``nvidia`` package's when None.
        shim_root (str, optional): Where the folder of links is made; the system's temporary
            folder when None.

    Returns:
        List[str]: ``[]`` when the toolkit has ``cusparse.h``, else the folder of links.

    Raises:
        RuntimeError: Neither the toolkit nor an nvidia wheel has the header.
    """
    include = _toolkit_include(home)
    if include and osp.isfile(osp.join(include, 'cusparse.h')):
        return []
    if nvidia_roots is None:
        spec = importlib.util.find_spec('nvidia')
        nvidia_roots = list(spec.submodule_search_locations) \
            if spec and spec.submodule_search_locations else []
    found = sorted({osp.dirname(h) for r in nvidia_roots
                    for h in glob.glob(osp.join(r, '*', 'include', 'cusparse.h'))})
    if not found:
        raise RuntimeError(f'cusparse.h is neither in the CUDA toolkit {home} nor in an '
                           "nvidia-* wheel of site-packages; torch's CUDA headers need it. "
                           'Install the toolkit\'s cusparse headers, or build without CUDA '
                           f'({EXT_CUDA_ENV}=0 for dualformer_mm, {MMCV_CUDA_ENV}=0 for '
                           'mmcv).')
    have = set(os.listdir(include)) if include else set()
    missing = sorted(set(os.listdir(found[0])) - have)
    key = hashlib.sha1('\0'.join([found[0], include or ''] + missing).encode()).hexdigest()
    shim = osp.join(shim_root or tempfile.gettempdir(), f'dualformer-cuda-include-{key[:12]}')
    os.makedirs(shim, exist_ok=True)
    for name in missing:
        link = osp.join(shim, name)
        try:
            os.symlink(osp.join(found[0], name), link)
        except FileExistsError:
            pass  # made by an earlier (or a concurrent) build
    return [shim]


# ---------------------------------------------------------------------------------------------
# Command line


def assignments(values: Mapping[str, Optional[str]]) -> str:
    """``KEY='value'`` lines that a shell can ``eval`` (None as empty)."""
    return '\n'.join(f'{k}={shlex.quote(v or "")}' for k, v in values.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; prints shell assignments."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('archs', help='TORCH_CUDA_ARCH_LIST chosen by the rule')
    sub.add_parser('toolkit', help='the CUDA toolkit found and its nvcc version')
    args = parser.parse_args(argv)
    try:
        if args.command == 'archs':
            choice = choose_archs()
            print(assignments({'ARCHS': choice.archs if choice else '',
                               'ARCH_SOURCE': choice.source if choice else '',
                               'ARCH_DESCRIPTION': choice.describe() if choice else 'none'}))
        else:
            home = cuda_home()
            print(assignments({'CUDA_HOME': home,
                               'NVCC_VERSION': nvcc_version(home) if home else ''}))
    except (ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
