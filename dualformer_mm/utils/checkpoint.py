# Copyright (c) dualformer-mm contributors.
"""Safe loading of mmengine checkpoints under ``torch.load(weights_only=True)``.

torch >= 2.6 unpickles checkpoints with an allowlist of globals (``weights_only=True`` by
default), so a stranger's file cannot run code. mmengine 0.10.7 checkpoints hold a few objects
outside that list (the message hub's ``HistoryBuffer`` with numpy arrays and scalars), so
``--resume`` and ``load_from`` fail out of the box. Instead of turning ``weights_only`` off, we
allow exactly those types. :func:`allow_mmengine_checkpoints` is called when ``dualformer_mm``
is imported, so every path that loads a checkpoint through mmengine (``init_cfg`` Pretrained,
``--resume``, ``load_from``, the inferencers) works and stays safe.

The allowlist is process-wide (it is torch's). What is added depends on the torch
(:func:`dualformer_mm.compat.add_safe_globals`): nothing on torch 2.1-2.3, which has no
allowlist and loads everything by default; the classes and numpy functions on 2.4-2.5 (whose
allowlist cannot name a restricted ``getattr``: mmengine checkpoints load there because
``weights_only`` is off by default); everything from 2.6. ``DUALFORMER_SAFE_GLOBALS=0`` leaves
torch's allowlist untouched.
"""
import builtins
import os
import pickle
from typing import Any, List

import numpy as np
from mmengine.logging import HistoryBuffer

from .. import compat

ENV_VAR = 'DUALFORMER_SAFE_GLOBALS'

# HistoryBuffer pickles its statistics methods by qualified name, which pickle spells as
# ``getattr(HistoryBuffer, 'min')``. These are the only attribute lookups a checkpoint needs.
_ALLOWED_ATTRIBUTES = {(HistoryBuffer, name) for name in ('min', 'max', 'current', 'mean')}


def restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to the HistoryBuffer statistics methods a checkpoint refers to.

    An unrestricted ``getattr`` in the allowlist would let a pickle walk from any allowed class
    to ``__globals__`` and on to ``eval``; this one refuses everything else.
    """
    if (obj, name) not in _ALLOWED_ATTRIBUTES:
        raise pickle_error(f'checkpoint asks for attribute {name!r} of {obj!r}, which is not '
                           'among the attributes an mmengine checkpoint needs')
    return builtins.getattr(obj, name)


def pickle_error(message: str) -> Exception:
    """The error type torch's weights-only unpickler reports for refused content."""
    return pickle.UnpicklingError(message)


def mmengine_safe_globals() -> List[compat.SafeGlobal]:
    """What an mmengine checkpoint holds beyond torch's own allowlist.

    Returns:
        list: ``HistoryBuffer``, the restricted ``getattr`` under the two names pickle gives
        ``getattr``, numpy's array and scalar reconstruction, ``np.ndarray``, ``np.dtype`` and
        the numeric dtype classes.
    """
    dtypes = [compat.numpy_dtype_class(name) for name in (
        'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
        'float16', 'float32', 'float64')]
    return [HistoryBuffer, (restricted_getattr, 'builtins.getattr'),
            (restricted_getattr, '__builtin__.getattr'), compat.numpy_multiarray._reconstruct,
            compat.numpy_multiarray.scalar, np.ndarray, np.dtype] + dtypes


def allow_mmengine_checkpoints() -> List[compat.SafeGlobal]:
    """Allow, for ``weights_only`` loading, exactly the types mmengine checkpoints hold.

    Idempotent. Nothing that can execute code is allowed: classes are rebuilt only through
    their own ``__setstate__`` and ``getattr`` is :func:`restricted_getattr`. With
    ``DUALFORMER_SAFE_GLOBALS=0`` in the environment it does nothing.

    Returns:
        list: The entries added, in the form this torch reads (see
        :func:`dualformer_mm.compat.add_safe_globals`).

    Example:
        >>> added = allow_mmengine_checkpoints()
        >>> compat.HAS_SAFE_GLOBALS == (HistoryBuffer in compat.get_safe_globals())
        True
    """
    setting = os.environ.get(ENV_VAR, '1').strip()
    if setting not in ('0', '1'):
        raise ValueError(f'{ENV_VAR} must be 1 (allow mmengine checkpoints) or 0 (leave '
                         f"torch's allowlist untouched), got {setting!r}")
    if setting == '0':
        return []
    return compat.add_safe_globals(mmengine_safe_globals())
