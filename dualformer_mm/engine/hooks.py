# Copyright (c) dualformer-mm contributors.
"""Training hooks for exact resumption of the paper's long schedules (section 4).

mmengine saves the iteration, model, optimizer and schedulers, but not the random number
generators, so a resumed run draws other augmentations (random crops, flips, mixup) than the
run it continues. :class:`RandomStateHook` stores them in the checkpoint and restores them.
"""
import random
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS


def _capture() -> Dict:
    """The Python, numpy and torch (CPU and, when in use, CUDA) RNG states of this process."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


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

    Example:
        >>> custom_hooks = [dict(type='RandomStateHook')]  # in a config
    """

    # Before CheckpointHook ('VERY_LOW'), so that the states gathered at the end of an epoch
    # or iteration are those the checkpoint saved right after belongs to.
    priority = 'LOW'

    def __init__(self) -> None:
        self._rank_states: Optional[List[Dict]] = None

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
            meta['random_state'] = _capture()  # this rank's (rank 0: the only one saving)
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
        random.setstate(_as_python_state(state['python']))
        np.random.set_state(state['numpy'])
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
        runner.logger.info('RandomStateHook: restored the Python, numpy and torch random states'
                           + (f' of rank {rank}' if world_size > 1 else ''))


def _as_python_state(state):
    """``random.setstate`` wants tuples; a pickle round trip keeps them, JSON would not."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
