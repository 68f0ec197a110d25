"""Device lists, model helpers and the loading of tools' scripts shared by the tests."""
import glob
import importlib.util
import os.path as osp
import sys
import types

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Every CUDA case carries the `cuda` marker: `pytest -m cuda` runs exactly them (what
# tools/gpu_check.sh does on a GPU machine), and they skip without a CUDA device.
CUDA = pytest.param('cuda', marks=[pytest.mark.cuda,
                                   pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason='needs a CUDA device')])
DEVICES = ['cpu', CUDA]
ARCHS = ['t', 'xs', 's', 'b']
# A DualFormer with one block per stage, for tests of code paths that every size runs alike
# (the sizes themselves are tested where they matter: Table 1's cost, the configs). Its last
# stage is wider than FFN.TILED_TRAINING_MAX_DIMS, as T's last two are, so a training step
# takes both the tiled and the plain FFN; two and three heads per stage in the later stages.
TINY_ARCH = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 144], num_heads=[1, 2, 2, 3],
                 mlp_ratios=[2, 2, 2, 2])


def training_configs(demo: bool = True) -> list:
    """The configs that build and train a model, sorted: ``configs/<toolbox>/`` and, with
    ``demo``, ``configs/demo/``. ``configs/_base_`` holds their pieces and ``configs/deploy``
    mmdeploy's deploy configs, which describe an export of a model, not a model.

    Args:
        demo (bool): Whether the demo's configs are included. Defaults to True.

    Returns:
        list: Absolute paths.
    """
    skip = {'_base_', 'deploy'} | (set() if demo else {'demo'})
    paths = glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    return sorted(p for p in paths if not skip & set(osp.relpath(p, ROOT).split(osp.sep)))


def load_script(path: str) -> types.ModuleType:
    """The module of the script ``path`` (relative to the repository root), loaded from its
    file as ``python path`` would run it, without running its ``__main__`` block.

    A script is a command line, no package member: the tests call its ``main(argv)`` or
    ``parse_args`` through this instead of putting its folder on ``sys.path``. Each script
    is loaded once per process, as ``tools_script.<path without .py, dots for slashes>``.

    Args:
        path (str): E.g. ``'tools/deployment/pytorch2onnx.py'``.

    Returns:
        types.ModuleType: The script's module.
    """
    name = 'tools_script.' + osp.splitext(path)[0].replace('/', '.')
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, path))
        module = importlib.util.module_from_spec(spec)
        # Registered first: a dataclass of the script looks its module up while it is built.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_package(path: str) -> types.ModuleType:
    """The package of the folder ``path`` (relative to the repository root) under its folder's
    name, as ``python -m NAME`` imports it with the folder's parent on ``PYTHONPATH``.

    ``tools/gpu_check`` is such a package: ``tools/gpu_check.sh`` runs it that way, and its
    configs name its modules (``custom_imports``). Its modules then import as
    ``importlib.import_module('gpu_check.common')``, without ``sys.path`` holding ``tools/``.

    Args:
        path (str): E.g. ``'tools/gpu_check'``.

    Returns:
        types.ModuleType: The package.
    """
    folder = osp.join(ROOT, path)
    name = osp.basename(path.rstrip('/'))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, osp.join(folder, '__init__.py'), submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    elif osp.dirname(sys.modules[name].__file__) != folder:
        raise ImportError(f'{name} is already imported from {sys.modules[name].__file__}, '
                          f'not {folder}')
    return sys.modules[name]
