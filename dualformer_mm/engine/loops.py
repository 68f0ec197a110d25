# Copyright (c) dualformer-mm contributors.
"""Training loops whose data pipeline draws each sample's augmentation from its own streams.

They are mmengine's epoch- and iteration-based training loops with one difference in how the
training dataloader is built: its dataset and sampler are wrapped in
:class:`~dualformer_mm.engine.sample_seeding.PerSampleSeedDataset` and
:class:`~dualformer_mm.engine.sample_seeding.PerSampleSeedSampler`, so that a resumed run loads the same
augmented batches as the run it continues, whatever the number of workers (see
``sample_seeding.py``). The config keeps its usual shape: ``train_dataloader.dataset`` is
still the dataset, so ``--cfg-options train_dataloader.dataset.data_root=...`` works as before.
"""
from typing import Dict, Union

import torch
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from torch.utils.data import DataLoader

from .sample_seeding import PerSampleSeedDataset, PerSampleSeedSampler


def per_sample_seeded(dataloader: Union[Dict, DataLoader], seed: int) -> Union[Dict, DataLoader]:
    """A dataloader config with its dataset and sampler wrapped for per-sample streams.

    Args:
        dataloader (dict or DataLoader): A ``train_dataloader`` config; a built DataLoader is
            accepted only if its dataset is already a
            :class:`~dualformer_mm.engine.sample_seeding.PerSampleSeedDataset`.
        seed (int): The run's seed, the first word of every sample's key.

    Returns:
        dict or DataLoader: The config to build (or the DataLoader, unchanged).

    Example:
        >>> cfg = per_sample_seeded(dict(batch_size=2, dataset=dict(type='D'),
        ...                              sampler=dict(type='DefaultSampler')), seed=0)
        >>> cfg['dataset']['type'], cfg['sampler']['type'], cfg['sampler']['sample_seed']
        ('PerSampleSeedDataset', 'PerSampleSeedSampler', 0)
    """
    if isinstance(dataloader, DataLoader):
        if not isinstance(dataloader.dataset, PerSampleSeedDataset):
            raise TypeError(
                'the Seeded*TrainLoop loops wrap the dataset and sampler of a dataloader '
                'config (dict); a built DataLoader must already load a PerSampleSeedDataset '
                f'through a PerSampleSeedSampler, got a {type(dataloader.dataset).__name__}')
        return dataloader
    if not isinstance(dataloader, dict):
        raise TypeError(f'dataloader must be a config dict or a DataLoader, got {dataloader!r}')
    cfg = dict(dataloader)
    cfg['dataset'] = dict(type=PerSampleSeedDataset.__name__, dataset=cfg['dataset'])
    if 'sampler' in cfg:  # else mmengine's builder reports the missing sampler
        cfg['sampler'] = dict(type=PerSampleSeedSampler.__name__, sampler=cfg['sampler'],
                              sample_seed=seed)
    return cfg


def build_seeded_dataloader(dataloader: Union[Dict, DataLoader], seed: int,
                            diff_rank_seed: bool = False) -> DataLoader:
    """Build a training dataloader whose samples are loaded under per-sample streams.

    The config is wrapped by :func:`per_sample_seeded` and built by mmengine's
    ``Runner.build_dataloader``. The DataLoader also gets its own generator for the base seed
    torch draws for every new iterator; without one, torch draws it from the global torch
    generator. A loader with persistent workers makes its iterator once, in the first epoch
    the process runs: epoch 0 in a run that was never interrupted, the resumed epoch in a
    resumed one, and that extra draw would shift the main process's stream (stochastic depth,
    mixup). The per-sample streams do not depend on the base seed.

    Args:
        dataloader (dict or DataLoader): See :func:`per_sample_seeded`.
        seed (int): The run's seed.
        diff_rank_seed (bool): As ``randomness.diff_rank_seed`` (the shuffling seed).

    Returns:
        DataLoader: The training dataloader.

    Example:
        >>> loader = build_seeded_dataloader(dict(
        ...     batch_size=2, dataset=dict(type='PerSampleSeedDataset', dataset=list(range(4))),
        ...     sampler=dict(type='DefaultSampler', shuffle=False)), seed=0)
        >>> [[int(i) for i in batch] for batch in loader]
        [[0, 1], [2, 3]]
    """
    loader = Runner.build_dataloader(per_sample_seeded(dataloader, seed), seed=seed,
                                     diff_rank_seed=diff_rank_seed)
    loader.generator = torch.Generator().manual_seed(seed)
    return loader


@LOOPS.register_module()
class SeededEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` with per-sample random streams in the data pipeline.

    Takes the arguments of ``EpochBasedTrainLoop``. The training dataloader is built by
    :func:`build_seeded_dataloader` with the run's seed, so the augmentation of the ``p``-th
    sample of epoch ``e`` on rank ``r`` is drawn from streams seeded by ``(seed, r, e, p)``,
    in a worker or in the main process alike.

    Example:
        >>> train_cfg = dict(type='SeededEpochBasedTrainLoop', max_epochs=300, val_interval=1)
    """

    def __init__(self, runner, dataloader: Union[Dict, DataLoader], *args, **kwargs) -> None:
        super().__init__(runner, _build(runner, dataloader), *args, **kwargs)


@LOOPS.register_module()
class SeededIterBasedTrainLoop(IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop`` with per-sample random streams in the data pipeline.

    As :class:`SeededEpochBasedTrainLoop`. With mmengine's ``InfiniteSampler`` the whole run is
    one epoch and the position counts the samples drawn since the start; on resume mmengine
    loads and drops the batches already trained on, so the positions continue where they were.

    Example:
        >>> train_cfg = dict(type='SeededIterBasedTrainLoop', max_iters=80000, val_interval=8000)
    """

    def __init__(self, runner, dataloader: Union[Dict, DataLoader], *args, **kwargs) -> None:
        super().__init__(runner, _build(runner, dataloader), *args, **kwargs)


def _build(runner, dataloader: Union[Dict, DataLoader]) -> DataLoader:
    """The training dataloader, built as mmengine's loops build theirs, with the run's seed."""
    return build_seeded_dataloader(
        dataloader, runner.seed, runner._randomness_cfg.get('diff_rank_seed', False))
