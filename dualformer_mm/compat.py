# Copyright (c) dualformer-mm contributors.
"""Every difference between the torch, numpy and mmcv versions the package supports, in one
place.

The supported ranges live in :mod:`dualformer_mm.version` (``TORCH``, ``NUMPY``, ``MMCV``),
which setup.py reads too. Each branch below names the version it serves; the model, the ops and
the tests ask this module instead of testing ``hasattr`` themselves. What an old torch lacks
degrades with a statement (:data:`LIMITATIONS`), never with a crash. Importing it refuses, in
one line each, a torch older than :data:`MIN_TORCH` and a missing or 1.x mmcv.

Example:
    >>> from dualformer_mm import compat
    >>> compat.TORCH_VERSION >= compat.MIN_TORCH
    True
    >>> compat.is_compiling()
    False
"""
import re
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .version import MMCV, TORCH, release

#: The oldest torch the package runs on (``import dualformer_mm`` refuses older ones).
MIN_TORCH: Tuple[int, ...] = TORCH.minimum
#: The newest torch release series the package is tested on.
MAX_TESTED_TORCH: Tuple[int, ...] = release(TORCH.tested[-1])[:2]


def parse_version(version: str) -> Tuple[int, int]:
    """``(major, minor)`` of a version string such as ``'2.1.2+cu121'`` or ``'2.6.0a0'``.

    Args:
        version (str): A PEP 440 version string.

    Returns:
        tuple[int, int]: Major and minor release numbers.

    Example:
        >>> parse_version('2.1.2+cu121')
        (2, 1)
    """
    match = re.match(r'(\d+)\.(\d+)', version)
    if match is None:
        raise ValueError(f'cannot read a version number from {version!r}')
    return int(match.group(1)), int(match.group(2))


TORCH_VERSION = parse_version(torch.__version__)
NUMPY_VERSION = parse_version(np.__version__)


def check_torch_version(version: str = torch.__version__) -> None:
    """Refuse a torch older than :data:`MIN_TORCH` with one line naming both versions.

    Args:
        version (str): The torch version to check. Defaults to the installed one.

    Raises:
        ImportError: When ``version`` is older than :data:`MIN_TORCH`.

    Example:
        >>> check_torch_version('2.0.1')
        Traceback (most recent call last):
        ...
        ImportError: dualformer_mm needs torch >= 2.1, found torch 2.0.1
    """
    if TORCH.too_old(version):
        raise ImportError(f'dualformer_mm needs torch >= {TORCH.oldest}, found torch {version}')


# Before any branch below touches an API an older torch lacks.
check_torch_version()

#: The oldest mmcv (or mmcv-lite) whose layers the model builds on.
MIN_MMCV: Tuple[int, ...] = MMCV.minimum


def check_mmcv() -> str:
    """The installed mmcv's version, or one ImportError that says what to install.

    mmcv is not among the package's install requirements: an environment holds either the
    full mmcv (with the compiled ops mmdet and mmseg need) or mmcv-lite (layers only, enough
    for the backbone), and a requirement on one would make pip install it beside the other.

    Returns:
        str: ``mmcv.__version__``.

    Raises:
        ImportError: Neither is importable, or the one found is older than :data:`MIN_MMCV`.
    """
    advice = (f'install mmcv-lite (the backbone alone: pip install "mmcv-lite{MMCV.specifier}") '
              f'or mmcv {MMCV.oldest}-{MMCV.newest_tested_series} with its ops (needed by mmdet '
              'and mmseg); docs/install.md, "Into your own OpenMMLab environment"')
    try:
        import mmcv
    except ImportError as err:
        raise ImportError(f'dualformer_mm needs mmcv or mmcv-lite >= {MMCV.oldest} and neither '
                          f'is importable ({err}): {advice}') from err
    if MMCV.too_old(mmcv.__version__):
        raise ImportError(f'dualformer_mm needs mmcv or mmcv-lite >= {MMCV.oldest}, found mmcv '
                          f'{mmcv.__version__} (the OpenMMLab 1.x series): {advice}')
    return mmcv.__version__


MMCV_VERSION = check_mmcv()

# --- tracing and autocast ------------------------------------------------------------------

if TORCH_VERSION >= (2, 3):
    # torch >= 2.3: the public name.
    is_compiling: Callable[[], bool] = torch.compiler.is_compiling
else:
    # torch 2.1-2.2: only dynamo's own function exists.
    import torch._dynamo  # noqa: E402  (torch 2.1 does not import it with torch)

    is_compiling = torch._dynamo.is_compiling


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _promote_floats_while_tracing(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types`` for floating types, in Python that dynamo folds (torch 2.1)."""
    if not is_compiling() or a not in _FLOATS or b not in _FLOATS:
        return torch.promote_types(a, b)
    if a == b:
        return a
    if torch.float64 in (a, b):
        return torch.float64
    return torch.float32  # float32 with a half type, or float16 with bfloat16


if TORCH_VERSION >= (2, 2):
    # torch >= 2.2: dynamo folds torch.promote_types into a constant.
    promote_types: Callable[[torch.dtype, torch.dtype], torch.dtype] = torch.promote_types
else:
    # torch 2.1: dynamo cannot trace torch.promote_types (a torch function returning a dtype)
    # and breaks the graph at every call of the reference ops.
    promote_types = _promote_floats_while_tracing


def is_autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``'cpu'`` or ``'cuda'``).

    Args:
        device_type (str): ``'cpu'`` or ``'cuda'``.

    Example:
        >>> with torch.autocast('cpu', dtype=torch.bfloat16):
        ...     is_autocast_enabled('cpu')
        True
    """
    if TORCH_VERSION >= (2, 4):
        # torch >= 2.4: one function taking the device type.
        return torch.is_autocast_enabled(device_type)
    # torch 2.1-2.3: a function per device; the argument-less one means CUDA.
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled()
    if device_type == 'cuda':
        return torch.is_autocast_enabled()
    raise ValueError(f"device_type must be 'cpu' or 'cuda' on torch {torch.__version__}, "
                     f'got {device_type!r}')


if TORCH_VERSION >= (2, 2):
    # torch >= 2.2: CPU autocast to bfloat16 or float16.
    CPU_AUTOCAST_DTYPES: Tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
else:
    # torch 2.1: CPU autocast to bfloat16 only (float16 is refused when autocast starts).
    CPU_AUTOCAST_DTYPES = (torch.bfloat16, )

#: torch.compile exists on every supported torch, but for Python 3.12 only from torch 2.4 and
#: for 3.13 from 2.6 (dynamo refuses newer interpreters than it knows).
COMPILE_SUPPORTED = not ((sys.version_info >= (3, 12) and TORCH_VERSION < (2, 4)) or
                         (sys.version_info >= (3, 13) and TORCH_VERSION < (2, 6)))

# --- custom ops ----------------------------------------------------------------------------

#: Fake (meta) kernels for custom ops, which torch.compile and torch.export need to trace the
#: compiled extension: ``impl_abstract`` from torch 2.2, renamed ``register_fake`` in 2.4.
#: torch 2.1 has neither; there the traced graphs take the reference ops (``ops._backend``).
HAS_FAKE_KERNELS = TORCH_VERSION >= (2, 2)


def register_fake(op_name: str) -> Callable[[Callable], Callable]:
    """Decorator registering a fake kernel for the custom op ``op_name``.

    Args:
        op_name (str): Qualified op name, e.g. ``'dualformer::lsh_hash'``.

    Returns:
        Callable: The decorator; on torch 2.1 it leaves the function unregistered.
    """
    if TORCH_VERSION >= (2, 4):
        # torch >= 2.4.
        return torch.library.register_fake(op_name)
    if TORCH_VERSION >= (2, 2):
        # torch 2.2-2.3: the same API under its old name.
        return torch.library.impl_abstract(op_name)
    # torch 2.1: nothing to register with.
    return lambda fn: fn


#: ``torch.library.opcheck`` (schema, fake-kernel and autograd checks of a custom op): 2.4+.
HAS_OPCHECK = TORCH_VERSION >= (2, 4)
#: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter: 2.5+.
HAS_DYNAMO_ONNX_EXPORT = TORCH_VERSION >= (2, 5)

# --- checkpoints ---------------------------------------------------------------------------

#: ``torch.serialization.add_safe_globals`` exists from torch 2.4.
HAS_SAFE_GLOBALS = TORCH_VERSION >= (2, 4)
#: Allowlist entries of the form ``(fn, 'module.name')``, which let a restricted function
#: stand for a name such as ``builtins.getattr``, are understood from torch 2.6; torch 2.4-2.5
#: take plain callables only (a tuple there breaks every later ``weights_only`` load).
SAFE_GLOBALS_TAKE_NAMES = TORCH_VERSION >= (2, 6)
#: ``torch.load`` defaults to ``weights_only=True`` from torch 2.6.
WEIGHTS_ONLY_BY_DEFAULT = TORCH_VERSION >= (2, 6)

SafeGlobal = Union[Callable, Tuple[Callable, str]]


def add_safe_globals(entries: Sequence[SafeGlobal]) -> List[SafeGlobal]:
    """Add ``entries`` to torch's ``weights_only`` allowlist in the form this torch reads.

    Args:
        entries (Sequence): Callables, or ``(callable, 'module.name')`` pairs.

    Returns:
        list: What was added: everything on torch >= 2.6; the plain callables on torch
        2.4-2.5 (the named pairs, which that torch cannot read, are left out); nothing on
        torch 2.1-2.3, which has no allowlist to extend (and loads without one by default).
    """
    if not HAS_SAFE_GLOBALS:
        return []
    added = list(entries) if SAFE_GLOBALS_TAKE_NAMES else \
        [entry for entry in entries if not isinstance(entry, tuple)]
    torch.serialization.add_safe_globals(added)
    return added


def get_safe_globals() -> List[Any]:
    """torch's current user allowlist (empty where torch has none)."""
    return list(torch.serialization.get_safe_globals()) if HAS_SAFE_GLOBALS else []


# --- numpy ---------------------------------------------------------------------------------

if NUMPY_VERSION >= (2, 0):
    # numpy >= 2: the implementation package is ``numpy._core``.
    numpy_multiarray: Any = np._core.multiarray
else:
    # numpy 1.x: ``numpy.core`` (1.26 also has a ``numpy._core`` stub without ``multiarray``).
    numpy_multiarray = np.core.multiarray


def numpy_dtype_class(name: str) -> type:
    """The class of a numpy dtype (``np.dtypes.Float32DType`` for ``'float32'``).

    ``type(np.dtype(name))`` is that class on every numpy from 1.20, so no branch is needed;
    ``np.dtypes`` itself only exists from numpy 1.25.

    Example:
        >>> numpy_dtype_class('float32') is type(np.dtype('float32'))
        True
    """
    return type(np.dtype(name))


def describe_limitations() -> Optional[str]:
    """One sentence on what this torch lacks that newer ones have, or None."""
    missing = []
    if not HAS_FAKE_KERNELS:
        missing.append('fake kernels (torch >= 2.2), so inside torch.compile the partition ops '
                       'run the PyTorch reference instead of the fused kernels')
    if not COMPILE_SUPPORTED:
        missing.append(f'torch.compile on Python {sys.version_info[0]}.{sys.version_info[1]}')
    if torch.float16 not in CPU_AUTOCAST_DTYPES:
        missing.append('float16 autocast on the CPU (torch >= 2.2; bfloat16 works)')
    if not HAS_DYNAMO_ONNX_EXPORT:
        missing.append('the dynamo ONNX exporter (torch >= 2.5); torch.onnx.export works')
    if not missing:
        return None
    return f'torch {torch.__version__} lacks ' + '; '.join(missing) + '.'


#: What this torch lacks (None on a recent torch); shown by ``python -m dualformer_mm.compat``.
LIMITATIONS = describe_limitations()

if __name__ == '__main__':
    print(f'torch {torch.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}')
    print(LIMITATIONS or 'no limitations on this torch')

# --- mmdeploy (dualformer_mm.deployment.mmdeploy_support) ----------------------------------

#: ``torch.onnx.export`` exports with the torch.export-based exporter unless told
#: ``dynamo=False``: the default from torch 2.9. mmdeploy 1.3.1 passes TorchScript-exporter
#: arguments (``dynamic_axes``, tuples of data samples) and no ``dynamo``.
ONNX_EXPORT_DYNAMO_BY_DEFAULT = TORCH_VERSION >= (2, 9)
#: ``torch.onnx.symbolic_opset9._cast_Long`` (and the other ``_cast_*`` translations of the
#: deprecated ``torch._cast_*`` ops) exist up to torch 2.9; torch 2.10 removed them, and
#: mmdeploy 1.3.1's RoIAlign translation still imports it.
ONNX_HAS_CAST_LONG = TORCH_VERSION < (2, 10)
#: torch.fx keeps the functions ``torch.fx.wrap`` registered in a dict keyed by
#: ``(id(globals), name)`` from torch 2.1 (a list of pairs before); mmdeploy 1.3.1 counts and
#: pops them as a list when it leaves its rewriter context.
FX_WRAPS_IN_A_DICT = TORCH_VERSION >= (2, 1)
