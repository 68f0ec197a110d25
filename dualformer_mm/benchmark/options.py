# Copyright (c) dualformer-mm contributors.
"""The command-line options every benchmark script shares, and what they do to a run.

:func:`add_common_args` adds ``--device``, ``--threads``, ``--amp``/``--amp-dtype``,
``--channels-last``, ``--compile``, ``--warmup``, ``--repeat``, ``--iters``,
``--peer-source``, ``--json`` and ``--png``; :func:`settings_from_args` checks them and
returns a :class:`Settings`. :func:`build_all`, :func:`make_input`, :func:`forward_fn` and
:func:`autocast_context` apply the settings to the models, their input and their calls.
"""
import argparse
import os
import os.path as osp
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .zoo import (MODEL_ZOO, PEER_SOURCES, Source, build_model, count_params, print_sources,
                  resolve_sources)

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
COMPILE_WARMUP = 2  # untimed calls a compiled model needs at least
MIN_SIDE = 32  # one pixel of the stride-32 stage


@dataclass
class Settings:
    """Run options shared by the benchmark scripts."""

    device: str
    threads: int
    amp: bool
    amp_dtype: Optional[str]
    channels_last: bool
    compile: bool
    warmup: int
    repeat: int
    iters: int
    peer_source: str = 'auto'


def positive_int(minimum: int) -> Callable[[str], int]:
    """An argparse type for integers >= ``minimum``.

    Example:
        >>> positive_int(1)('3')
        3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {value}')
        return value

    return parse


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_size(text: str) -> Tuple[int, int]:
    """Parse ``HEIGHTxWIDTH`` (e.g. ``800x1280``) for argparse.

    Example:
        >>> parse_size('800x1333')
        (800, 1333)
    """
    match = re.fullmatch(r'\s*(\d+)\s*[xX]\s*(\d+)\s*', text)
    if not match:
        raise argparse.ArgumentTypeError(
            f'expected HEIGHTxWIDTH such as 800x1280, got {text!r}')
    height, width = int(match.group(1)), int(match.group(2))
    if min(height, width) < MIN_SIDE:
        raise argparse.ArgumentTypeError(
            f'each side must be at least {MIN_SIDE} pixels, got {text!r}')
    return height, width


def add_model_arg(parser: argparse.ArgumentParser, default: Sequence[str]) -> None:
    """Add ``--models``, whose argparse error for an unknown name lists the accepted ones.

    Args:
        parser (argparse.ArgumentParser): The script's parser.
        default (Sequence[str]): Models measured when ``--models`` is not given.
    """
    parser.add_argument('--models', nargs='+', default=list(default), choices=list(MODEL_ZOO),
                        metavar='MODEL',
                        help=f'models to measure, from: {", ".join(MODEL_ZOO)} '
                        f'(default: {" ".join(default)})')


def add_common_args(parser: argparse.ArgumentParser, warmup: int = 2,
                    repeat: int = 5) -> None:
    """Add the options every benchmark script shares.

    Args:
        parser (argparse.ArgumentParser): The script's parser.
        warmup (int): Default of ``--warmup``. Defaults to 2.
        repeat (int): Default of ``--repeat``. Defaults to 5.
    """
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='where the models run (default: cpu)')
    parser.add_argument('--threads', type=positive_int(1), default=None,
                        help=f'torch.set_num_threads (default: all {default_threads()} cores '
                        'this process may use)')
    parser.add_argument('--amp', action='store_true',
                        help='autocast the forward, and the loss when training (bf16 on '
                        'CPU, fp16 on CUDA by default)')
    parser.add_argument('--amp-dtype', choices=tuple(AMP_DTYPES), default=None,
                        help='autocast dtype; implies --amp')
    parser.add_argument('--channels-last', action='store_true',
                        help='models and inputs in channels_last memory format')
    parser.add_argument('--compile', action='store_true',
                        help=f'torch.compile every model (then at least {COMPILE_WARMUP} '
                        'warm-up forwards, which include the compilation)')
    parser.add_argument('--warmup', type=positive_int(0), default=warmup,
                        help=f'untimed forwards per model before timing (default: {warmup})')
    parser.add_argument('--repeat', type=positive_int(1), default=repeat,
                        help=f'timed rounds over all models; the median is reported '
                        f'(default: {repeat})')
    parser.add_argument('--iters', type=positive_int(1), default=1,
                        help='calls per timed sample, averaged (raise it on fast GPUs, '
                        'default: 1)')
    parser.add_argument('--peer-source', choices=PEER_SOURCES, default='auto',
                        help='where swin-t and convnext-t come from: auto (mmpretrain when it '
                        'imports, else timm), toolbox (mmpretrain) or timm (default: auto); '
                        'the scripts print which was used')
    parser.add_argument('--json', metavar='PATH', default=None, help='write the results here')
    parser.add_argument('--png', metavar='PATH', default=None, help='write a chart here')


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """Validate the shared options, apply the thread count, and return them.

    Args:
        parser (argparse.ArgumentParser): Used to report bad combinations, argparse-style.
        args (argparse.Namespace): Parsed arguments of :func:`add_common_args`.

    Returns:
        Settings: The validated options.
    """
    if args.device == 'cuda' and not torch.cuda.is_available():
        built = (f'built with CUDA {torch.version.cuda}' if torch.version.cuda
                 else 'a CPU-only build')
        parser.error(f'argument --device: cuda was requested but torch.cuda.is_available() '
                     f'is False (torch {torch.__version__}, {built}, no usable GPU); '
                     'use --device cpu')
    warmup = args.warmup
    if args.compile and warmup < COMPILE_WARMUP:
        # The first call compiles; the second can recompile, as state that the graphs guard
        # on changes during the first (e.g. DualFormer's partition ops load their extension
        # lazily). Neither belongs in the timing.
        warmup = COMPILE_WARMUP
        print(f'note: --compile raises --warmup from {args.warmup} to {warmup}', flush=True)
    amp = args.amp or args.amp_dtype is not None
    amp_dtype = args.amp_dtype or (('fp16' if args.device == 'cuda' else 'bf16') if amp else None)
    for path_arg in ('json', 'png'):
        path = getattr(args, path_arg)
        if path and not osp.isdir(osp.dirname(osp.abspath(path))):
            parser.error(f'argument --{path_arg}: folder {osp.dirname(path)!r} does not exist')
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    if args.device == 'cuda':
        # Autotuned conv algorithms, as in training; the warm-up pays for the tuning.
        torch.backends.cudnn.benchmark = True
    return Settings(device=args.device, threads=threads, amp=amp, amp_dtype=amp_dtype,
                    channels_last=args.channels_last, compile=args.compile,
                    warmup=warmup, repeat=args.repeat, iters=args.iters,
                    peer_source=args.peer_source)


def prepare_model(model: nn.Module, settings: Settings) -> nn.Module:
    """Move ``model`` to the device and memory format, and compile it if asked.

    Args:
        model (nn.Module): A backbone from :func:`.zoo.build_model`.
        settings (Settings): Run options.

    Returns:
        nn.Module: The model to call (the compiled wrapper with ``--compile``).
    """
    model.to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if settings.compile:
        # Static shapes: each input size gets its own specialised graph, as in deployment.
        return torch.compile(model, dynamic=False)
    return model


def build_all(names: Sequence[str], settings: Settings,
              image_size: Optional[Tuple[int, int]] = None
              ) -> Tuple[Dict[str, nn.Module], Dict[str, int], Dict[str, Source]]:
    """Build, place and (optionally) compile the named models.

    Args:
        names (Sequence[str]): Keys of :data:`.zoo.MODEL_ZOO`.
        settings (Settings): Run options (``peer_source`` among them).
        image_size (Tuple[int, int], optional): The one input size of the run, if there is
            one (see :func:`.zoo.build_model`).

    Returns:
        Tuple[Dict[str, nn.Module], Dict[str, int], Dict[str, Source]]: The models to call,
        their parameter counts, and where each came from (printed here).

    Raises:
        BenchmarkError: A model whose package is missing (checked for all before building).
    """
    # Every package checked first: a missing one is reported before minutes of building.
    sources = resolve_sources(names, settings.peer_source)
    print_sources(sources)
    models, params = {}, {}
    for name, source in sources.items():
        model = build_model(name, source, image_size)
        params[name] = count_params(model)
        models[name] = prepare_model(model, settings)
    return models, params, sources


def make_input(batch: int, height: int, width: int, settings: Settings) -> torch.Tensor:
    """A random image batch on the device, in the requested memory format."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, height, width, generator=gen).to(settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast_context(settings: Settings) -> ContextManager:
    """Autocast context of the run (``--amp``/``--amp-dtype``), or a no-op for fp32."""
    if not settings.amp:
        return nullcontext()
    return torch.autocast(settings.device, dtype=AMP_DTYPES[settings.amp_dtype])


def forward_fn(model: nn.Module, x: torch.Tensor, settings: Settings) -> Callable[[], None]:
    """A closure that runs one inference forward of ``model`` on ``x``.

    Args:
        model (nn.Module): The model to call.
        x (torch.Tensor): Its input.
        settings (Settings): Run options (autocast).

    Returns:
        Callable[[], None]: The forward; outputs are dropped at once, so they do not pile up.
    """

    def run() -> None:
        with torch.inference_mode(), autocast_context(settings):
            model(x)

    return run
