# Copyright (c) dualformer-mm contributors.
"""Training hooks for exact resumption of the paper's long schedules (section 4).

mmengine saves the iteration, model, optimizer and schedulers, but not the random number
generators, so a resumed run draws other random numbers (stochastic depth, mixup, and the
augmentations loaded in the main process) than the run it continues. :class:`RandomStateHook`
stores them in the checkpoint and restores them. The data loader workers' streams are not
process state to save: ``SeededEpochBasedTrainLoop`` and ``SeededIterBasedTrainLoop``
(``loops.py``) derive every sample's from the seed, the epoch and its position instead.
"""
import random
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS

from .sample_seeding import PerSampleSeedSampler


def _capture() -> Dict:
    """The Python, numpy and torch (CPU and, when in use, CUDA) RNG states of this process."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _restore(state: Dict) -> None:
    """Set this process's generators to ``state`` (from :func:`_capture`)."""
    random.setstate(_as_python_state(state['python']))
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _per_sample_seeded(dataloader) -> bool:
    """Whether the training dataloader draws through a :class:`PerSampleSeedSampler`."""
    batch_sampler = getattr(dataloader, 'batch_sampler', None)
    sampler = getattr(batch_sampler, 'sampler', getattr(dataloader, 'sampler', None))
    return isinstance(sampler, PerSampleSeedSampler)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the Python, numpy and torch (CPU and CUDA) RNG states with every checkpoint.

    On resume, the states are restored, so with deterministic settings a run killed after a
    checkpoint and resumed ends with the same weights as a run that was never interrupted.
    mmengine writes checkpoints from rank 0 only, so in a distributed run the hook gathers
    every rank's states just before the checkpoint hook runs (at each epoch end, or at the
    iterations the checkpoint hook saves at) and each rank restores its own on resume; a
    resume with another number of processes restores rank 0's states everywhere, with a
    warning.

    Validation leaves the states as it found them: it runs after the epoch's checkpoint was
    written, and a resumed run does not repeat it, so whatever it drew (torch draws a seed for
    every new data loader iterator) would otherwise shift the uninterrupted run's streams.

    Before training it warns when the resumed run cannot continue exactly: data loader workers
    without per-sample streams (``SeededEpochBasedTrainLoop`` / ``SeededIterBasedTrainLoop``),
    or a config without ``randomness.seed``, whose dataloader was built with a new random seed
    before the checkpoint's was read.

    Example:
        >>> custom_hooks = [dict(type='RandomStateHook')]  # in a config
    """

    # Before CheckpointHook ('VERY_LOW'), so that the states gathered at the end of an epoch
    # or iteration are those the checkpoint saved right after belongs to.
    priority = 'LOW'

    def __init__(self) -> None:
        self._rank_states: Optional[List[Dict]] = None
        self._before_val: Optional[Dict] = None  # the training streams, while validating
        self._build_seed: Optional[int] = None

    def before_run(self, runner) -> None:
        # The training dataloader is built by now, with this seed; a resume may change it.
        self._build_seed = runner.seed

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        if getattr(loader, 'num_workers', 0) > 0 and not _per_sample_seeded(loader):
            runner.logger.warning(
                'RandomStateHook: the training dataloader has workers but no per-sample random '
                'streams, so a resumed run draws other augmentations than the run it continues: '
                "use train_cfg=dict(type='SeededEpochBasedTrainLoop') (or "
                "'SeededIterBasedTrainLoop'), or num_workers=0")
        if runner.iter > 0 and self._build_seed is not None and runner.seed != self._build_seed:
            runner.logger.warning(
                f'RandomStateHook: the config sets no randomness.seed, so the training '
                f'dataloader was built with a new seed ({self._build_seed}) before the '
                f"checkpoint's ({runner.seed}) was read: this run shuffles and augments "
                f'differently from the run it continues. To continue it exactly, resume with '
                f'--cfg-options randomness.seed={runner.seed}')

    def before_val(self, runner) -> None:
        self._before_val = _capture()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            _restore(self._before_val)
            self._before_val = None

    def _gather(self) -> None:
        """Collect every rank's states (a collective: all ranks call it at the same point)."""
        self._rank_states = all_gather_object(_capture())

    def _checkpoint_hook(self, runner) -> Optional[CheckpointHook]:
        """The run's checkpoint hook, if any."""
        return next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)

    def after_train_epoch(self, runner) -> None:
        if get_world_size() > 1:
            self._gather()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if get_world_size() == 1:
            return
        hook = self._checkpoint_hook(runner)
        if hook is None or hook.by_epoch:
            return
        if self.every_n_train_iters(runner, hook.interval) or self.is_last_train_iter(runner):
            self._gather()

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        if self._rank_states is not None and len(self._rank_states) == get_world_size():
            meta['random_state_per_rank'] = self._rank_states
            meta['random_state'] = self._rank_states[get_rank()]
        else:
            # This rank's (rank 0: the only one saving); while validating (a best checkpoint),
            # the training streams that validation will hand back.
            meta['random_state'] = self._before_val or _capture()
        self._rank_states = None

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        meta = checkpoint.get('meta', {})
        state = meta.get('random_state')
        per_rank = meta.get('random_state_per_rank')
        rank, world_size = get_rank(), get_world_size()
        if per_rank is not None and len(per_rank) == world_size:
            state = per_rank[rank]
        elif world_size > 1 and state is not None:
            runner.logger.warning(
                f'RandomStateHook: the checkpoint holds random states for '
                f'{len(per_rank) if per_rank else 1} process(es), not {world_size}: every rank '
                "restores rank 0's, so the resumed run's random draws differ from the original")
        if state is None:
            runner.logger.warning('RandomStateHook: the checkpoint holds no random state, so '
                                  'the resumed run draws new random numbers')
            return
        _restore(state)
        runner.logger.info('RandomStateHook: restored the Python, numpy and torch random states'
                           + (f' of rank {rank}' if world_size > 1 else ''))


def _as_python_state(state):
    """``random.setstate`` wants tuples; a pickle round trip keeps them, JSON would not."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
