# Copyright (c) dualformer-mm contributors.
"""Check that the datasets a config reads exist, before anything is built.

The toolboxes open their data lazily and deep inside: a machine without COCO ends a
``tools/train.py`` run in pycocotools' ``FileNotFoundError`` after the model is built, and a
missing ADE20K or ImageNet folder in an ``os.scandir`` traceback. :func:`check_dataset_paths`
walks the dataset configs of the dataloaders a tool will use (through the wrappers
``ConcatDataset``, ``RepeatDataset``, ``ClassBalancedDataset``, ...), resolves each path the way
mmengine's ``BaseDataset`` does (``ann_file`` and ``data_prefix`` folders joined with
``data_root``) and, when one is missing, raises one line that names it and the
``--cfg-options`` keys that point the config elsewhere.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

# Dataset types of the paper's tasks (section 4), by the name users know them by.
DATASET_NAMES: Dict[str, str] = {
    'CocoDataset': 'COCO', 'ADE20KDataset': 'ADE20K', 'ImageNet': 'ImageNet',
}
# The evaluator that runs with each dataloader; CocoMetric reads its own ann_file.
_EVALUATORS = {'val_dataloader': 'val_evaluator', 'test_dataloader': 'test_evaluator'}


class DatasetNotFoundError(FileNotFoundError):
    """A path a config's dataset or evaluator reads does not exist; the message is one line."""


@dataclass
class MissingPath:
    """One path a config reads that does not exist.

    Args:
        path (str): The path as the dataset would open it (joined with ``data_root``).
        key (str): The config key that names it, e.g. ``'train_dataloader.dataset.ann_file'``.
        root_key (str, optional): The ``data_root`` key of the dataset it belongs to, the one
            to override to point the whole dataset elsewhere; None for an evaluator's file or a
            dataset without ``data_root``.
        dataset (str): What is missing, e.g. ``'COCO'`` or a dataset type.
        suggestion (str): ``KEY=VALUE`` for ``--cfg-options``.
    """

    path: str
    key: str
    root_key: Optional[str]
    dataset: str
    suggestion: str


def _is_remote(path: str, backend_args: Any) -> bool:
    """Paths this check cannot stat: URLs and non-local file backends."""
    if '://' in path:
        return True
    return isinstance(backend_args, Mapping) and backend_args.get('backend', 'local') != 'local'


def _join(root: str, path: str) -> str:
    return path if not root or osp.isabs(path) else osp.join(root, path)


def _check_dataset(node: Mapping, key: str, out: List[MissingPath]) -> None:
    """Check one leaf dataset config; append what is missing (the first missing path only)."""
    data_root = node.get('data_root') or ''
    name = DATASET_NAMES.get(str(node.get('type')), str(node.get('type', 'dataset')))
    backend_args = node.get('backend_args')
    root_key = f'{key}.data_root' if data_root else None

    def missing(path: str, path_key: str) -> None:
        value = 'FILE' if root_key is None and path_key.endswith('ann_file') else 'DIR'
        out.append(MissingPath(path=path, key=path_key, root_key=root_key, dataset=name,
                               suggestion=f'{root_key or path_key}={value}'))

    if data_root and not _is_remote(data_root, backend_args) and not osp.isdir(data_root):
        missing(data_root, f'{key}.data_root')
        return
    ann_file = node.get('ann_file') or ''
    if isinstance(ann_file, str) and ann_file:
        path = _join(data_root, ann_file)
        if not _is_remote(path, backend_args) and not osp.isfile(path):
            missing(path, f'{key}.ann_file')
            return
    prefixes = node.get('data_prefix') or {}
    if isinstance(prefixes, str):
        prefixes = {None: prefixes}
    if not any(prefixes.values()) and isinstance(node.get('split'), str) and not ann_file:
        # mmpretrain's ImageNet reads the folder <data_root>/<split> when no prefix is given.
        prefixes = {None: node['split']}
    for prefix_name, folder in prefixes.items():
        if not isinstance(folder, str) or not folder:
            continue
        path = _join(data_root, folder)
        if not _is_remote(path, backend_args) and not osp.isdir(path):
            suffix = f'.{prefix_name}' if prefix_name else ''
            missing(path, f'{key}.data_prefix{suffix}')
            return


def _walk(node: Any, key: str, out: List[MissingPath]) -> None:
    """Descend through dataset wrappers to the datasets that read files."""
    if not isinstance(node, Mapping):
        return
    if isinstance(node.get('datasets'), (list, tuple)):  # ConcatDataset and the like
        for i, child in enumerate(node['datasets']):
            _walk(child, f'{key}.datasets.{i}', out)
        return
    if isinstance(node.get('dataset'), Mapping):  # RepeatDataset, ClassBalancedDataset, ...
        _walk(node['dataset'], f'{key}.dataset', out)
        return
    _check_dataset(node, key, out)


def _check_evaluator(node: Any, key: str, data_root: str, out: List[MissingPath]) -> None:
    """An evaluator (or a list of them) with its own ``ann_file``, as mmdet's CocoMetric has."""
    if isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            _check_evaluator(child, f'{key}.{i}', data_root, out)
        return
    if not isinstance(node, Mapping):
        return
    ann_file = node.get('ann_file')
    if not isinstance(ann_file, str) or not ann_file:
        return
    if _is_remote(ann_file, node.get('backend_args')) or osp.isfile(ann_file):
        return
    # CocoMetric's ann_file is data_root + a relative path, fixed when the config was read:
    # overriding the dataset's data_root leaves it behind, so say how it continues.
    if data_root and ann_file.startswith(data_root):
        value = 'DIR/' + ann_file[len(data_root):].lstrip('/')
    else:
        value = 'FILE'
    name = 'evaluator ' + str(node.get('type', ''))
    out.append(MissingPath(path=ann_file, key=f'{key}.ann_file', root_key=None,
                           dataset=name.strip(), suggestion=f'{key}.ann_file={value}'))


def find_missing_dataset_paths(cfg: Mapping,
                               dataloaders: Sequence[str]) -> List[MissingPath]:
    """Every missing path that ``dataloaders`` of ``cfg`` (and their evaluators) would read.

    Args:
        cfg (Mapping): A loaded config (``mmengine.config.Config`` or a dict).
        dataloaders (Sequence[str]): Dataloader keys, e.g. ``('train_dataloader',
            'val_dataloader')``. ``val_dataloader`` and ``test_dataloader`` also check
            ``val_evaluator`` and ``test_evaluator``. Absent or None dataloaders are skipped.

    Returns:
        list[MissingPath]: At most one entry per dataset (its first missing path) and one per
        evaluator file, in config order.

    Example:
        >>> cfg = dict(train_dataloader=dict(dataset=dict(
        ...     type='RepeatDataset', times=2,
        ...     dataset=dict(type='CocoDataset', data_root='no/such/coco/'))))
        >>> [m.key for m in find_missing_dataset_paths(cfg, ['train_dataloader'])]
        ['train_dataloader.dataset.dataset.data_root']
    """
    out: List[MissingPath] = []
    for loader_key in dataloaders:
        loader = cfg.get(loader_key)
        if not isinstance(loader, Mapping):
            continue
        _walk(loader.get('dataset'), f'{loader_key}.dataset', out)
        evaluator_key = _EVALUATORS.get(loader_key)
        if evaluator_key:
            dataset = loader.get('dataset')
            data_root = (dataset.get('data_root') or '') if isinstance(dataset, Mapping) else ''
            _check_evaluator(cfg.get(evaluator_key), evaluator_key, data_root, out)
    return out


def check_dataset_paths(cfg: Mapping, dataloaders: Sequence[str]) -> None:
    """Raise :class:`DatasetNotFoundError` with one line if a dataset path is missing.

    The line names the first missing path and every ``--cfg-options`` key to set (each
    dataset's ``data_root``, or the file's own key when it has none), so one command fixes
    all the dataloaders of the run.

    Args:
        cfg (Mapping): A loaded config.
        dataloaders (Sequence[str]): The dataloaders the caller will use
            (see :func:`find_missing_dataset_paths`).

    Raises:
        DatasetNotFoundError: Some path is missing.

    Example:
        >>> cfg = dict(val_dataloader=dict(dataset=dict(
        ...     type='ADE20KDataset', data_root='no/ade',
        ...     data_prefix=dict(img_path='images/validation'))))
        >>> check_dataset_paths(cfg, ['val_dataloader'])
        Traceback (most recent call last):
        ...
        dualformer_mm.utils.datasets.DatasetNotFoundError: ADE20K data not found: \
no/ade does not exist (val_dataloader.dataset.data_root); point the config at your copy \
with --cfg-options val_dataloader.dataset.data_root=DIR
    """
    missing = find_missing_dataset_paths(cfg, dataloaders)
    if not missing:
        return
    first = missing[0]
    where = first.key if first.root_key in (None, first.key) else \
        f'{first.key} under {first.root_key}'
    suggestions = list(dict.fromkeys(m.suggestion for m in missing))
    raise DatasetNotFoundError(
        f'{first.dataset} data not found: {first.path} does not exist ({where}); point the '
        f'config at your copy with --cfg-options {" ".join(suggestions)}')
