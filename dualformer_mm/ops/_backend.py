# Copyright (c) dualformer-mm contributors.
"""Backend switch and lazy loading of the fused partition ops of MHPA (paper section 3.2).

``DUALFORMER_OPS`` picks the implementation of every partition op:

* ``auto`` (default): on CPU tensors the compiled kernels of ``dualformer_mm._ext`` when it
  is built, else the PyTorch reference, with a one-time warning that says why and how to
  build it. On CUDA tensors the PyTorch reference (native ATen ops), with a one-time warning
  on the first CUDA call that says so and how to opt in: the CUDA kernels have not yet
  passed on a GPU. :data:`CUDA_KERNELS_VERIFIED` turns them on for ``auto`` once they have.
* ``ext``: the extension on every device, and an error naming the missing piece when it
  cannot serve a call. On CUDA this is the opt-in: ``make gpu-check`` compares the CUDA
  kernels with the reference on the user's GPU and says whether to set it.
* ``reference``: the pure-PyTorch reference ops of :mod:`dualformer_mm.ops.partition`.

The extension is imported when a module that calls the ops is built
(:func:`prepare_backend`, from ``PartitionAttention.__init__``), or on the first op call
otherwise, never at package import, so the reference path works on a machine where nothing
was compiled (mmcv's multi_scale_deform_attn imports its extension eagerly, which makes its
pure path unreachable without a build).

During ONNX export every op takes its reference path: that decomposition into native ops is
what the exporter translates.

Under ``torch.use_deterministic_algorithms(True)`` (mmengine's
``randomness=dict(deterministic=True)``) the CUDA kernels that sum with atomics, whose order
varies from run to run, are not used: ``auto`` runs the reference there (its ``index_add`` and
``index_select`` have deterministic CUDA implementations in that mode) and says so once, and
``ext`` raises an error naming the setting. The CPU kernels are deterministic (fixed
summation order, independent of the thread count) and the CUDA hash has no atomics, so those
run as usual.
"""
import contextlib
import importlib
import logging
import os
import warnings
from typing import Callable, Iterator, List, Optional

import torch

from .. import compat

ENV_VAR = 'DUALFORMER_OPS'
MODES = ('auto', 'ext', 'reference')
EXT_NAME = 'dualformer_mm._ext'
BUILD_HINT = ('build it from the repository root with `make setup`, or `pip install '
              '--no-build-isolation -e .` (tools/setup_env.sh shows the uv equivalent)')
# Whether `auto` runs the CUDA kernels. False until they have passed `make gpu-check` on a GPU:
# until then a wrong index there would train silently wrong, while the reference runs native
# ATen ops that are tested everywhere. The CPU kernels are verified by the test suite.
CUDA_KERNELS_VERIFIED = False
UNVERIFIED_CUDA = (
    f'dualformer_mm partition ops: {ENV_VAR}=auto runs the PyTorch reference ops on CUDA '
    'tensors, because the fused CUDA kernels have not yet passed a check on a GPU. '
    '`make gpu-check` compares them with the reference on this machine; its report ends with '
    f'whether to set {ENV_VAR}=ext to use them here. Set {ENV_VAR}=reference to silence this.')


class _State:
    """Process-wide backend state; plain attributes so torch.compile guards on them."""

    def __init__(self) -> None:
        self.mode: Optional[str] = None  # resolved lazily from the environment
        self.tried = False  # whether the extension import was attempted
        self.ext = None
        self.ext_cuda = False
        self.error = ''
        self.warned: set = set()
        self.said: set = set()  # one-time INFO statements (not warnings)


_state = _State()
_on_load: List[Callable[[], None]] = []
# Fake kernels and autograd are registered with torch once per process, even when the state
# above is reset (tests do) and the extension looked up again.
_hooks_done = False


def _run_hooks() -> None:
    global _hooks_done
    if not _hooks_done:
        _hooks_done = True
        for fn in _on_load:
            fn()


def on_extension_load(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` once the extension's ops exist (fake kernels and autograd need them).

    Args:
        fn (Callable): Registration function without arguments.

    Returns:
        Callable: ``fn`` itself, so this works as a decorator.
    """
    _on_load.append(fn)
    if _hooks_done:
        fn()
    return fn


def _mode_from_env() -> str:
    mode = os.environ.get(ENV_VAR, 'auto').strip().lower() or 'auto'
    if mode not in MODES:
        raise ValueError(f'{ENV_VAR} must be one of {MODES}, got {mode!r}')
    return mode


def get_backend() -> str:
    """The current backend mode: ``'auto'``, ``'ext'`` or ``'reference'``.

    Example:
        >>> from dualformer_mm import ops
        >>> ops.get_backend() in ('auto', 'ext', 'reference')
        True
    """
    if _state.mode is None:
        _state.mode = _mode_from_env()
    return _state.mode


def set_backend(mode: Optional[str]) -> None:
    """Set the backend mode for this process; ``None`` re-reads ``DUALFORMER_OPS``.

    Args:
        mode (str, optional): ``'auto'``, ``'ext'``, ``'reference'`` or None.

    Example:
        >>> from dualformer_mm import ops
        >>> ops.set_backend('reference'); ops.get_backend()
        'reference'
        >>> ops.set_backend(None)
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f'backend must be one of {MODES}, got {mode!r}')
    _state.mode = mode if mode is not None else _mode_from_env()


@contextlib.contextmanager
def use_backend(mode: str) -> Iterator[None]:
    """Context manager that runs its body with backend ``mode``, then restores the old one.

    Args:
        mode (str): ``'auto'``, ``'ext'`` or ``'reference'``.

    Example:
        >>> import torch
        >>> from dualformer_mm import ops
        >>> with ops.use_backend('reference'):
        ...     ops.lsh_hash(torch.ones(1, 2, 4), torch.ones(4, 3)).tolist()
        [[7, 7]]
    """
    old = get_backend()
    set_backend(mode)
    try:
        yield
    finally:
        _state.mode = old


def load_extension():
    """Import ``dualformer_mm._ext`` once and register its fake kernels and autograd.

    Returns:
        module | None: The extension module, or None when it cannot be imported (the reason
        is kept for the error and warning messages).
    """
    if not _state.tried:
        _state.tried = True
        try:
            ext = importlib.import_module(EXT_NAME)
        except ImportError as err:
            # Not only "not built": a stale build against another torch fails here too, with
            # an undefined symbol; the message carries the original error either way.
            _state.error = f'{type(err).__name__}: {err}'
            return None
        _state.ext_cuda = bool(ext.with_cuda())
        _state.ext = ext
        _run_hooks()
    return _state.ext


def prepare_backend() -> str:
    """Resolve the mode and, unless it is ``'reference'``, import the extension now.

    Modules that call the ops run this when they are built: otherwise ``torch.compile``
    would trace the first call's import (a graph break) and the state changes it makes (each
    a recompile, until torch's recompile limit).

    Returns:
        str: The mode.
    """
    mode = get_backend()
    if mode != 'reference':
        load_extension()
        if (not compat.HAS_FAKE_KERNELS and _state.ext is not None
                and 'no-fake' not in _state.said):
            # An INFO line, not a warning: nothing is wrong, eager runs are unaffected.
            _state.said.add('no-fake')
            from mmengine.logging import print_log
            print_log(f'dualformer_mm partition ops: torch {torch.__version__} cannot register '
                      'fake kernels (torch >= 2.2 can), so inside torch.compile they run the '
                      'PyTorch reference ops; eager runs use the fused kernels.',
                      logger='current', level=logging.INFO)
    return mode


def extension_available(device: str = 'cpu') -> bool:
    """Whether the compiled kernels can serve tensors on ``device`` (``'cpu'`` or ``'cuda'``).

    Args:
        device (str): Device type. Defaults to ``'cpu'``.

    Example:
        >>> from dualformer_mm import ops
        >>> isinstance(ops.extension_available('cpu'), bool)
        True
    """
    if load_extension() is None:
        return False
    return device == 'cpu' or (device == 'cuda' and _state.ext_cuda)


def auto_picks_extension(device_type: str) -> bool:
    """Whether ``auto`` runs the compiled kernels on ``device_type`` where they are built.

    The CPU kernels always; the CUDA kernels once :data:`CUDA_KERNELS_VERIFIED`.

    Args:
        device_type (str): ``'cpu'``, ``'cuda'``, ...

    Example:
        >>> from dualformer_mm.ops import _backend
        >>> _backend.auto_picks_extension('cpu')
        True
    """
    return device_type != 'cuda' or CUDA_KERNELS_VERIFIED


def _missing(device_type: str) -> str:
    """Which piece is missing for the extension to run on ``device_type``."""
    if _state.ext is None:
        return f'the compiled extension {EXT_NAME} cannot be imported ({_state.error})'
    if device_type == 'cuda':
        return (f'{EXT_NAME} was built without its CUDA kernels (no CUDA toolkit or a CPU-only '
                'torch at build time)')
    return f'{EXT_NAME} has no kernels for device type {device_type!r}'


def _warn_once(key: tuple, message: str) -> None:
    if key not in _state.warned:
        _state.warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def use_extension(op: str, device: torch.device, cuda_deterministic: bool = False) -> bool:
    """Decide whether ``op`` on ``device`` runs the compiled kernel or the reference.

    Args:
        op (str): Op name, for messages.
        device (torch.device): Device of the op's inputs.
        cuda_deterministic (bool): Whether the op's CUDA kernels, forward and backward, give
            the same result on every run (no atomic sums), so that they may run under
            ``torch.use_deterministic_algorithms(True)``. Defaults to False.

    Returns:
        bool: True for the extension.

    Raises:
        RuntimeError: In ``ext`` mode, when the extension cannot serve the call, or when
            deterministic algorithms are requested and the op's CUDA kernels are not.
    """
    mode = _state.mode if _state.mode is not None else get_backend()
    if mode == 'reference' or torch.onnx.is_in_onnx_export():
        return False
    if not compat.HAS_FAKE_KERNELS and compat.is_compiling():
        # The tracer needs a fake kernel for a custom op; this torch has none to register
        # (said once by prepare_backend).
        return False
    device_type = device.type
    if mode == 'auto' and not auto_picks_extension(device_type):
        _warn_once(('cuda', 'unverified'), UNVERIFIED_CUDA)
        return False
    if (device_type == 'cuda' and not cuda_deterministic
            and torch.are_deterministic_algorithms_enabled()):
        if mode == 'ext' and not torch.is_deterministic_algorithms_warn_only_enabled():
            raise RuntimeError(
                f'{ENV_VAR}=ext but torch.use_deterministic_algorithms(True) is set (mmengine: '
                f'randomness=dict(deterministic=True)), and the CUDA kernels of {op} sum with '
                f'atomics in an order that varies from run to run. Set {ENV_VAR}=auto (or '
                'reference) for the deterministic PyTorch reference ops, or turn deterministic '
                'algorithms off.')
        if mode == 'auto':
            _warn_once(('cuda', 'deterministic'),
                       'dualformer_mm partition ops: torch.use_deterministic_algorithms(True) '
                       'is set, so they run the PyTorch reference ops on CUDA, which are '
                       'deterministic there (the fused CUDA kernels sum with atomics).')
            return False
    if not _state.tried:
        load_extension()
    if _state.ext is not None and (device_type == 'cpu' or (device_type == 'cuda' and _state.ext_cuda)):
        return True
    reason = _missing(device_type)
    if mode == 'ext':
        raise RuntimeError(f'{ENV_VAR}=ext but {reason}, so {op} cannot run; {BUILD_HINT}, or '
                           f'set {ENV_VAR}=reference for the PyTorch ops.')
    _warn_once((device_type, reason),
               f'dualformer_mm partition ops: {reason}; using the PyTorch reference ops on '
               f'{device_type}. To use the fused kernels, {BUILD_HINT}. Set {ENV_VAR}=reference '
               'to silence this.')
    return False
