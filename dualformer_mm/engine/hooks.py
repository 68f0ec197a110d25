# Copyright (c) dualformer-mm contributors.
"""Training hooks for exact resumption of the paper's long schedules (section 4).

mmengine saves the iteration, model, optimizer and schedulers, but not the random number
generators, so a resumed run draws other augmentations (random crops, flips, mixup) than the
run it continues. :class:`RandomStateHook` stores them in the checkpoint and restores them.
"""
import random
from typing import Dict

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the Python, numpy and torch (CPU and CUDA) RNG states with every checkpoint.

    On resume, the states are restored, so with deterministic settings a run killed after a
    checkpoint and resumed ends with the same weights as a run that was never interrupted.
    Only rank 0 writes checkpoints, so every rank of a distributed run resumes with rank 0's
    states: exact continuation is guaranteed for single-process runs.

    Example:
        >>> custom_hooks = [dict(type='RandomStateHook')]  # in a config
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        state = dict(python=random.getstate(), numpy=np.random.get_state(),
                     torch=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint.setdefault('meta', {})['random_state'] = state

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        state = checkpoint.get('meta', {}).get('random_state')
        if state is None:
            runner.logger.warning('RandomStateHook: the checkpoint holds no random state, so '
                                  'the resumed run draws new random numbers')
            return
        random.setstate(_as_python_state(state['python']))
        np.random.set_state(state['numpy'])
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
        runner.logger.info('RandomStateHook: restored the Python, numpy and torch random states')


def _as_python_state(state):
    """``random.setstate`` wants tuples; a pickle round trip keeps them, JSON would not."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
