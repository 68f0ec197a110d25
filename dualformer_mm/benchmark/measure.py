# Copyright (c) dualformer-mm contributors.
"""Timing and memory of the benchmarked calls.

* :func:`time_interleaved`: warm-up, then repeats in which every model runs once in turn,
  so that a burst of load on the machine hits all models alike; the median is reported.
* :func:`peak_memory_mib`: the peak memory one call allocates on top of what was already
  live (weights, input), on CPU from torch.profiler's allocation events, on CUDA from the
  caching allocator's statistics; :func:`state_mib` adds what a training step keeps live.
"""
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import (Callable, ContextManager, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

import torch
from torch import nn

from .options import Settings


def _sync(device: str) -> None:
    """Wait for queued CUDA work, so the clock measures the forward and not its launch."""
    if device == 'cuda':
        torch.cuda.synchronize()


def failure(err: BaseException) -> str:
    """A one-line description of a failed call (typically out of memory).

    Example:
        >>> failure(RuntimeError('CUDA out of memory.\\nTried to allocate 2 GiB'))
        'RuntimeError: CUDA out of memory.'
    """
    first = str(err).strip().splitlines()[0] if str(err).strip() else ''
    return f'{type(err).__name__}: {first[:200]}'


def time_interleaved(fns: Dict[str, Callable[[], None]], settings: Settings,
                     context: Optional[Callable[[str], ContextManager]] = None
                     ) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Time several forwards with warm-up and interleaved repeats.

    Every model is warmed up first; then each of ``settings.repeat`` rounds runs every model
    once (``settings.iters`` forwards, averaged), the start of the round rotating so that no
    model always runs right after a given other. Noise on a shared machine then spreads over
    all models instead of biasing whichever ran during a busy spell.

    Args:
        fns (Dict[str, Callable]): Name -> forward closure (see
            :func:`.options.forward_fn`).
        settings (Settings): Run options (device, warmup, repeat, iters).
        context (Callable, optional): ``context(name)`` is entered around each warm-up and
            each timed call of ``fns[name]``, outside the clock (``bench_ops.py`` selects the
            op backend with it).

    Returns:
        Tuple[Dict[str, List[float]], Dict[str, str]]: Seconds per forward of every timed
        sample, by name; and the models whose forward raised (e.g. out of memory at a large
        size), with the error. Those are dropped from the timing, the others go on.
    """
    errors: Dict[str, str] = {}
    enter = context or (lambda name: nullcontext())

    def attempt(name: str, calls: int) -> bool:
        try:
            for _ in range(calls):
                fns[name]()
        except (RuntimeError, MemoryError) as err:
            errors[name] = failure(err)
            if settings.device == 'cuda':
                torch.cuda.empty_cache()
            return False
        return True

    for name in fns:
        with enter(name):
            attempt(name, settings.warmup)
    times: Dict[str, List[float]] = {name: [] for name in fns if name not in errors}
    for round_index in range(settings.repeat):
        names = [name for name in times if name not in errors]
        shift = round_index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            with enter(name):
                _sync(settings.device)
                start = time.perf_counter()
                if attempt(name, settings.iters):
                    _sync(settings.device)
                    times[name].append((time.perf_counter() - start) / settings.iters)
    return {name: t for name, t in times.items() if name not in errors}, errors


def median(values: Sequence[float]) -> float:
    """Median of ``values``."""
    return statistics.median(values)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what C++ code writes to file descriptor 2 inside the block."""
    # Kineto logs every profiler start and stop to stderr (and, without a GPU, an ERROR about
    # counting GPUs), which would bury the benchmark's output. Only the profiler's start and
    # stop run in here, never the forward, so no warning of the model is hidden.
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mib(fn: Callable[[], None], device: str) -> float:
    """Peak memory that one call of ``fn`` allocates beyond what was live before it.

    What is counted: bytes obtained from PyTorch's allocator during the call (activations,
    outputs, temporaries, and kernel workspaces that PyTorch allocates, such as cuDNN's on
    CUDA; in a training step also the gradients and, in the first step, the optimizer's
    state), at their highest simultaneous total. Not counted: weights and input, which were
    allocated before; memory that a library allocates on its own rather than through
    PyTorch (e.g. oneDNN's internal scratch buffers on CPU); the allocator's cache and the
    rest of the process. It is what the call itself needs, not the process's RSS.

    * CUDA: ``torch.cuda.max_memory_allocated()`` after resetting the peak, minus
      ``memory_allocated()`` before the call (allocated bytes, not the cache's reserve).
    * CPU: the call runs under ``torch.profiler`` with ``profile_memory=True``; every
      allocation and free of the CPU allocator is a ``[memory]`` event with a signed size,
      and the peak is the maximum of their running sum in time order.

    Args:
        fn (Callable[[], None]): The call, e.g. a forward (:func:`.options.forward_fn`)
            or a training step (``train_step.TrainStep``).
        device (str): ``'cpu'`` or ``'cuda'``.

    Returns:
        float: The peak in MiB.

    Example:
        >>> round(peak_memory_mib(lambda: torch.ones(1024, 256).sum(), 'cpu'), 2)
        1.0
    """
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_silenced():
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    # The raw Kineto events keep each allocation with its own timestamp; prof.events() and
    # key_averages() fold them into per-op totals, which lose the peak inside an op.
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak / 2**20


def peak_memory_all(fns: Dict[str, Callable[[], None]], settings: Settings,
                    errors: Dict[str, str]) -> Dict[str, float]:
    """:func:`peak_memory_mib` of every forward not already in ``errors``.

    Args:
        fns (Dict[str, Callable]): Name -> forward closure.
        settings (Settings): Run options (device).
        errors (Dict[str, str]): Failed models; skipped, and updated with new failures.

    Returns:
        Dict[str, float]: MiB by name; NaN for a model that failed.
    """
    peaks = {}
    for name, fn in fns.items():
        peaks[name] = math.nan
        if name in errors:
            continue
        try:
            peaks[name] = peak_memory_mib(fn, settings.device)
        except (RuntimeError, MemoryError) as err:
            errors[name] = failure(err)
    return peaks


def state_mib(tensors: Iterable[torch.Tensor]) -> float:
    """MiB held by ``tensors``, each storage counted once.

    Used for what stays allocated between training steps (weights, buffers, optimizer
    state, the batch), which :func:`peak_memory_mib` does not count.

    Example:
        >>> w = torch.zeros(1024, 256)  # 1 MiB of float32
        >>> state_mib([w, w, w[0]])
        1.0
    """
    seen: Dict[Tuple[str, int], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values()) / 2**20


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                   inputs: Sequence[torch.Tensor] = ()) -> Iterator[torch.Tensor]:
    """The tensors a training process keeps between steps, for :func:`state_mib`.

    Args:
        model (nn.Module): Its parameters and buffers.
        optimizer (torch.optim.Optimizer): Its state (AdamW's two moments per parameter,
            once it has stepped).
        inputs (Sequence[torch.Tensor]): Batch tensors made before the step.

    Example:
        >>> net = nn.Linear(4, 2)
        >>> len(list(training_state(net, torch.optim.AdamW(net.parameters()))))
        2
    """
    yield from model.parameters()
    yield from model.buffers()
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    yield from inputs
