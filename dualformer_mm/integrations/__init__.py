# Copyright (c) dualformer-mm contributors.
"""DualFormer in libraries outside OpenMMLab, registered when that library is imported.

timm: ``dualformer_t``, ``dualformer_xs``, ``dualformer_s`` and ``dualformer_b`` join timm's
model registry (:mod:`dualformer_mm.integrations.timm_dualformer`). ``import dualformer_mm``
calls :func:`register_timm_models_on_import`, which does not import timm: when timm is
already imported the models are registered at once, otherwise at the end of timm's own import,
so ``import dualformer_mm`` costs nothing more with timm installed (importing timm brings
torchvision and torch's symbolic-shape machinery, seconds). Without timm nothing happens and
nothing is said.

Example:
    >>> import dualformer_mm, timm
    >>> timm.list_models('dualformer_*')
    ['dualformer_b', 'dualformer_s', 'dualformer_t', 'dualformer_xs']
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Optional, Sequence, Tuple

from ..version import TIMM

#: The oldest timm the models register with (``dualformer_mm.version.TIMM``):
#: ``build_model_with_cfg(feature_cfg=...)`` with ``generate_default_cfgs`` and the hook feature
#: wrapper (0.9); 1.0 adds ``forward_intermediates`` and its getter wrapper, used where present.
MIN_TIMM: Tuple[int, ...] = TIMM.minimum


def register_timm_models() -> bool:
    """Import timm and register the DualFormer sizes in its model registry.

    Returns:
        bool: True when the models are registered (a no-op after the first time); False
        when timm is not installed (silently), or fails to import or is older than
        :data:`MIN_TIMM` (with a warning saying which).
    """
    try:
        timm = importlib.import_module('timm')
    except ModuleNotFoundError as err:
        if err.name == 'timm':
            return False
        _warn(f'timm is installed but cannot be imported ({type(err).__name__}: {err})')
        return False
    except Exception as err:  # a broken timm must not break the import that got here
        _warn(f'timm is installed but cannot be imported ({type(err).__name__}: {err})')
        return False
    if TIMM.too_old(timm.__version__):
        _warn(f'timm {timm.__version__} is older than {TIMM.oldest}, the oldest version they '
              'register with')
        return False
    importlib.import_module(f'{__name__}.timm_dualformer')  # registers at its import
    return True


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """A one-shot import hook: lets timm's import run, then registers the models."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)
        # The other finders locate timm as they would have without this hook.
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, 'loader', None)
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        run_timm = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_timm(module)
            register_timm_models()

        loader.exec_module = exec_module  # this spec's own loader instance
        return spec


def register_timm_models_on_import() -> None:
    """Register the models now if timm is imported, else once it is; never imports timm."""
    if 'timm' in sys.modules:
        register_timm_models()
    elif not any(isinstance(finder, _AfterTimmImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())


def _warn(reason: str) -> None:
    warnings.warn(f'dualformer_mm: the DualFormer models are not registered in timm: {reason}.',
                  RuntimeWarning, stacklevel=3)


__all__ = ['MIN_TIMM', 'register_timm_models', 'register_timm_models_on_import']
