# Copyright (c) dualformer-mm contributors.
"""Per-sample random streams for the data pipeline, so that a resumed run draws the same
augmentations as the run it continues, with any number of data loader workers.

mmengine seeds each data loader worker once, when it starts, from the seed, the rank and the
worker id. A persistent worker then draws every epoch's augmentations from one stream, and a
resumed run starts new workers: their streams begin again where the first epoch's began, so
from the resumed epoch on the random crops, flips and scales differ from those of the
interrupted run (without persistent workers every epoch restarts the same streams instead).

Here each sample gets its own streams: the sampler, which runs in the main process and knows
the epoch, tags every index with the key ``(seed, rank, epoch, position in the epoch)``; the
dataset wrapper, in whichever process loads the sample, seeds Python's ``random``, numpy's
global generator and torch's CPU generator from that key, loads the sample, and puts the
process's previous states back. What a sample's pipeline draws is then a function of the run's
seed, the rank, the epoch and the sample's position only: the same with 0, 2 or 8 workers,
persistent or not, interrupted or not; and data loading in the main process
(``num_workers=0``) leaves the main process's streams (stochastic depth, mixup) untouched.

:class:`~dualformer_mm.engine.loops.SeededEpochBasedTrainLoop` and
:class:`~dualformer_mm.engine.loops.SeededIterBasedTrainLoop` wrap the training dataloader of a
config in these two classes.
"""
import random
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.registry import DATA_SAMPLERS, DATASETS
from torch.utils.data import Dataset, Sampler

SampleKey = Tuple[int, ...]


class SeededIndex(int):
    """A dataset index that carries the key of its sample's random streams.

    It is an ``int``, so batch samplers and datasets that look samples up by index (e.g.
    mmdet's ``AspectRatioBatchSampler``) pass it on unchanged.

    Args:
        index (int): The dataset index.
        key (tuple[int, ...]): Non-negative integers that seed the sample's streams.

    Example:
        >>> index = SeededIndex(7, (0, 0, 3, 12))
        >>> index + 1, index.key
        (8, (0, 0, 3, 12))
    """

    key: SampleKey

    def __new__(cls, index: int, key: SampleKey) -> 'SeededIndex':
        obj = super().__new__(cls, index)
        obj.key = tuple(int(k) for k in key)
        return obj

    def __reduce__(self):
        # The index travels to the data loader workers through a pickle.
        return SeededIndex, (int(self), self.key)

    def __repr__(self) -> str:
        return f'SeededIndex({int(self)}, key={self.key})'


@contextmanager
def sample_random_streams(key: Sequence[int]) -> Iterator[None]:
    """Seed ``random``, numpy's global generator and torch's CPU generator from ``key``.

    On exit the three generators get back the states they had on entry, so the calling
    process's own streams continue as if nothing had been drawn. The three seeds are derived
    from ``key`` by numpy's ``SeedSequence``, which mixes the key's words so that nearby keys
    (consecutive positions or epochs) give unrelated streams. CUDA generators are left alone:
    data pipelines run on the CPU.

    Args:
        key (Sequence[int]): Non-negative integers, e.g. ``(seed, rank, epoch, position)``.

    Example:
        >>> with sample_random_streams((0, 0, 1, 5)):
        ...     a = random.random(), np.random.rand(), torch.rand(1).item()
        >>> with sample_random_streams((0, 0, 1, 5)):
        ...     b = random.random(), np.random.rand(), torch.rand(1).item()
        >>> a == b
        True
    """
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(6, np.uint32)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(int(words[0]) << 32 | int(words[1]))
    np.random.seed(words[2:4])
    torch.default_generator.manual_seed(int(words[4]) << 32 | int(words[5]))
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


@DATASETS.register_module()
class PerSampleSeedDataset(Dataset):
    """Load each sample under its own random streams (see :class:`PerSampleSeedSampler`).

    An index tagged by :class:`PerSampleSeedSampler` (a :class:`SeededIndex`) is loaded inside
    :func:`sample_random_streams` of its key; a plain index is passed through unseeded. Other
    attributes (``metainfo``, ``get_data_info``, ``pipeline``...) are read from the wrapped
    dataset, so hooks and batch samplers that inspect the training dataset see it unchanged.

    Args:
        dataset (dict or Dataset): The dataset, or its config.

    Example:
        >>> import torch
        >>> class Noise(torch.utils.data.Dataset):
        ...     def __len__(self):
        ...         return 4
        ...     def __getitem__(self, i):
        ...         return torch.rand(1).item()
        >>> data = PerSampleSeedDataset(Noise())
        >>> data[SeededIndex(2, (0, 0, 0, 2))] == data[SeededIndex(2, (0, 0, 0, 2))]
        True
    """

    def __init__(self, dataset: Union[dict, Dataset]) -> None:
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset

    def full_init(self) -> None:
        """Initialise the wrapped dataset, as mmengine's dataloader builder asks."""
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if isinstance(index, SeededIndex):
            with sample_random_streams(index.key):
                return self.dataset[int(index)]
        return self.dataset[index]

    def __getattr__(self, name: str):
        # Only reached for names this wrapper lacks. Special names are not forwarded: pickling
        # (spawned workers) looks some up before __init__ has set self.dataset, and forwarding
        # e.g. __getitems__ would let the DataLoader bypass __getitem__ and its seeding.
        dataset = self.__dict__.get('dataset')
        if dataset is None or name.startswith('__'):
            raise AttributeError(name)
        return getattr(dataset, name)


@DATA_SAMPLERS.register_module()
class PerSampleSeedSampler(Sampler):
    """Tag each index of a sampler with the key of its sample's random streams.

    The key of the ``p``-th index of epoch ``e`` on rank ``r`` is ``(seed, r, e, p)``. The
    epoch is the one given to :meth:`set_epoch` (mmengine's ``DistSamplerSeedHook`` calls it
    before every epoch, in the main process); the position counts from 0 in every pass over
    the wrapped sampler, so it is the same whether or not the run was interrupted. Pair it
    with :class:`PerSampleSeedDataset`, which applies the key.

    Args:
        sampler (dict or Sampler): The sampler, or its config; built with the ``dataset`` and
            ``seed`` given here, as mmengine's dataloader builder builds samplers.
        dataset (Dataset): The dataset to sample from (set by the dataloader builder).
        seed (int, optional): The shuffling seed for a sampler built from a config (set by the
            dataloader builder; None with ``randomness.diff_rank_seed=True``).
        sample_seed (int, optional): The first word of every key. Defaults to ``seed``, or,
            when that is None, to a seed drawn once and shared by all ranks.

    Example:
        >>> from mmengine.dataset import DefaultSampler
        >>> sampler = PerSampleSeedSampler(DefaultSampler(range(3), shuffle=False),
        ...                                dataset=range(3), sample_seed=0)
        >>> sampler.set_epoch(2)
        >>> [index.key for index in sampler]
        [(0, 0, 2, 0), (0, 0, 2, 1), (0, 0, 2, 2)]
    """

    def __init__(self, sampler: Union[dict, Sampler], dataset: Dataset,
                 seed: Optional[int] = None, sample_seed: Optional[int] = None) -> None:
        if isinstance(sampler, dict):
            sampler = DATA_SAMPLERS.build(sampler, default_args=dict(dataset=dataset, seed=seed))
        self.sampler = sampler
        self.dataset = dataset
        if sample_seed is None:
            sample_seed = seed if seed is not None else sync_random_seed()
        if sample_seed < 0:
            raise ValueError(f'sample_seed must be a non-negative integer, got {sample_seed}')
        self.sample_seed = int(sample_seed)
        self.rank = get_dist_info()[0]
        self.epoch = 0

    def __iter__(self) -> Iterator[SeededIndex]:
        epoch = self.epoch
        for position, index in enumerate(self.sampler):
            yield SeededIndex(index, (self.sample_seed, self.rank, epoch, position))

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the keys, and of the wrapped sampler when it has epochs."""
        self.epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __getattr__(self, name: str):
        # Read-through to the wrapped sampler (e.g. ``shuffle``, ``seed``), as for the dataset.
        sampler = self.__dict__.get('sampler')
        if sampler is None or name.startswith('__'):
            raise AttributeError(name)
        return getattr(sampler, name)

