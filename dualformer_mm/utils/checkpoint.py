# Copyright (c) dualformer-mm contributors.
"""Safe loading of mmengine checkpoints under ``torch.load(weights_only=True)``.

torch >= 2.6 unpickles checkpoints with an allowlist of globals (``weights_only=True``), so a
stranger's file cannot run code. mmengine 0.10.7 checkpoints hold a few objects outside that
list (the message hub's ``HistoryBuffer`` with numpy arrays and scalars), so ``--resume`` and
``load_from`` fail out of the box. Instead of turning ``weights_only`` off, we allow exactly those
types. :func:`allow_mmengine_checkpoints` is called when ``dualformer_mm`` is imported, so every
path that loads a checkpoint through mmengine (``init_cfg`` Pretrained, ``--resume``,
``load_from``, the inferencers) works and stays safe.
"""
import builtins
from typing import Any, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

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
    return torch.serialization.pickle.UnpicklingError(message)


def _numpy_globals() -> List[Any]:
    """numpy array/scalar reconstruction and the numeric dtypes mmengine logs hold."""
    core = getattr(np, '_core', None) or np.core  # numpy >= 2 renamed np.core to np._core
    dtypes = [getattr(np.dtypes, f'{kind}DType') for kind in (
        'Bool', 'Int8', 'Int16', 'Int32', 'Int64', 'UInt8', 'UInt16', 'UInt32', 'UInt64',
        'Float16', 'Float32', 'Float64')]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype] + dtypes


def allow_mmengine_checkpoints() -> None:
    """Allow, for ``weights_only`` loading, exactly the types mmengine checkpoints hold.

    Idempotent. Nothing that can execute code is allowed: classes are rebuilt only through
    their own ``__setstate__`` and ``getattr`` is :func:`restricted_getattr`.

    Example:
        >>> allow_mmengine_checkpoints()
        >>> HistoryBuffer in torch.serialization.get_safe_globals()
        True
    """
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (restricted_getattr, 'builtins.getattr'),
         (restricted_getattr, '__builtin__.getattr')] + _numpy_globals())
