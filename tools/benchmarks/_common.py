# Copyright (c) dualformer-mm contributors.
"""Shared pieces of the backbone benchmarks (paper section 4.4, Table 6, and section 3.2).

Used by ``throughput.py`` (images/s, the comparison of Table 6 of "DualFormer: Dual Path
Transformer with Partition Attention") and ``resolution_scaling.py`` (latency and memory
against input size, the linear-complexity claim of MHPA in section 3.2):

* :data:`MODEL_ZOO`: the benchmarked backbones by name, DualFormer-T/XS/S/B and the peers
  Swin-T and ConvNeXt-T (mmpretrain) and PVTv2-B1/B2 (mmdet). Every model is the backbone
  alone, without head, in eval mode, returning the feature maps of its four stages with their
  output norms, as the detection and segmentation toolboxes use them; Swin-T is built with
  ``pad_small_map=True`` as in detection, which is what lets it take any input size.
* :func:`time_interleaved`: warm-up, then repeats in which every model runs once in turn,
  so that a burst of load on the machine hits all models alike; the median is reported.
* :func:`peak_memory_mib`: the peak memory one forward allocates on top of what was already
  live (weights, input), on CPU from torch.profiler's allocation events, on CUDA from the
  caching allocator's statistics.
* :func:`add_common_args` / :func:`settings_from_args`: ``--device``, ``--threads``,
  ``--amp``/``--amp-dtype``, ``--channels-last``, ``--compile``, ``--warmup``, ``--repeat``,
  ``--iters``, ``--json``, ``--png``.
* :func:`describe_environment`: versions, device, CPU model, threads and date for the JSON.
"""
import argparse
import datetime
import importlib
import importlib.metadata
import math
import os
import os.path as osp
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import (Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    # Run from a checkout without `pip install -e .`, the package still imports.
    sys.path.insert(0, ROOT)

REFERENCE_MODEL = 'swin-t'
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
COMPILE_WARMUP = 2  # untimed calls a compiled model needs at least


class BenchmarkError(Exception):
    """A problem with the user's request that the scripts report without a traceback."""


@dataclass(frozen=True)
class ModelSpec:
    """How to build one benchmarked backbone."""

    package: str  # the import that provides the class, named when it is missing
    install: str  # how to get it
    cfg: Dict[str, Any]


# The tested toolbox versions are pinned in requirements/stack.txt.
PIP_MMPRETRAIN = 'pip install mmpretrain==1.2.0'
PIP_MMDET = 'pip install mmdet==3.3.0'


def _dualformer(arch: str) -> ModelSpec:
    """Spec of DualFormer of size ``arch``."""
    return ModelSpec('dualformer_mm', 'pip install -e . from the repository root',
                     dict(type='DualFormer', arch=arch, out_indices=(0, 1, 2, 3)))


MODEL_ZOO: Dict[str, ModelSpec] = {
    'dualformer-t': _dualformer('t'),
    'dualformer-xs': _dualformer('xs'),
    'dualformer-s': _dualformer('s'),
    'dualformer-b': _dualformer('b'),
    'swin-t': ModelSpec('mmpretrain', PIP_MMPRETRAIN,
                        dict(type='SwinTransformer', arch='tiny', out_indices=(0, 1, 2, 3),
                             pad_small_map=True)),
    'convnext-t': ModelSpec('mmpretrain', PIP_MMPRETRAIN,
                            dict(type='ConvNeXt', arch='tiny', out_indices=(0, 1, 2, 3),
                                 gap_before_final_norm=False)),
    # mmdet's PVTv2 defaults (heads 1/2/5/8, MLP ratios 8/8/4/4, reduction 8/4/2/1) are
    # the paper's B-series; B1 and B2 differ only in depth.
    'pvtv2-b1': ModelSpec('mmdet', PIP_MMDET,
                          dict(type='PyramidVisionTransformerV2', embed_dims=64,
                               num_layers=[2, 2, 2, 2], out_indices=(0, 1, 2, 3))),
    'pvtv2-b2': ModelSpec('mmdet', PIP_MMDET,
                          dict(type='PyramidVisionTransformerV2', embed_dims=64,
                               num_layers=[3, 4, 6, 3], out_indices=(0, 1, 2, 3))),
}


def _registry(package: str):
    """The MODELS registry of ``package``, with its models registered."""
    if package == 'dualformer_mm':
        import dualformer_mm  # noqa: F401  (registers DualFormer in mmengine's root MODELS)
        from mmengine.registry import MODELS
        return MODELS
    # Importing <package>.models runs the @MODELS.register_module decorators.
    importlib.import_module(f'{package}.models')
    return importlib.import_module(f'{package}.registry').MODELS


def _registry_or_error(name: str):
    """The registry that builds model ``name``, or an error naming the missing toolbox."""
    spec = MODEL_ZOO[name]
    try:
        return _registry(spec.package)
    except ImportError as err:
        raise BenchmarkError(
            f'model {name!r} needs the {spec.package} package, which cannot be imported '
            f'({type(err).__name__}: {err}); install it ({spec.install}) or leave the model '
            'out of --models') from None


def build_model(name: str) -> nn.Module:
    """Build one backbone of :data:`MODEL_ZOO` on CPU, in eval mode.

    Args:
        name (str): A key of :data:`MODEL_ZOO`.

    Returns:
        nn.Module: The backbone, randomly initialised (weights do not change the speed).

    Raises:
        BenchmarkError: Unknown name, or the toolbox that provides the model is missing.
    """
    if name not in MODEL_ZOO:
        raise BenchmarkError(f'unknown model {name!r}; accepted names: {", ".join(MODEL_ZOO)}')
    registry = _registry_or_error(name)
    model = registry.build(dict(MODEL_ZOO[name].cfg))
    # Statement, not `model = model.eval()`: mmpretrain's Swin and ConvNeXt train() return None.
    model.eval()
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


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


def positive_int(minimum: int) -> Callable[[str], int]:
    """An argparse type for integers >= ``minimum``."""

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
                        help='autocast the forward (bf16 on CPU, fp16 on CUDA by default)')
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
                        help='forwards per timed sample, averaged (raise it on fast GPUs, '
                        'default: 1)')
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
                    warmup=warmup, repeat=args.repeat, iters=args.iters)


def prepare_model(model: nn.Module, settings: Settings) -> nn.Module:
    """Move ``model`` to the device and memory format, and compile it if asked.

    Args:
        model (nn.Module): A backbone from :func:`build_model`.
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


def make_input(batch: int, height: int, width: int, settings: Settings) -> torch.Tensor:
    """A random image batch on the device, in the requested memory format."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, height, width, generator=gen).to(settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(settings: Settings) -> ContextManager:
    """Autocast context of the run, or a no-op for fp32."""
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
        with torch.inference_mode(), _autocast(settings):
            model(x)

    return run


def _sync(device: str) -> None:
    """Wait for queued CUDA work, so the clock measures the forward and not its launch."""
    if device == 'cuda':
        torch.cuda.synchronize()


def _failure(err: BaseException) -> str:
    """A one-line description of a failed forward (typically out of memory)."""
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
        fns (Dict[str, Callable]): Name -> forward closure (see :func:`forward_fn`).
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
            errors[name] = _failure(err)
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
    CUDA), at their highest simultaneous total. Not counted: weights and input, which were
    allocated before; memory that a library allocates on its own rather than through
    PyTorch (e.g. oneDNN's internal scratch buffers on CPU); the allocator's cache and the
    rest of the process. It is what the forward itself needs, not the process's RSS.

    * CUDA: ``torch.cuda.max_memory_allocated()`` after resetting the peak, minus
      ``memory_allocated()`` before the call (allocated bytes, not the cache's reserve).
    * CPU: the call runs under ``torch.profiler`` with ``profile_memory=True``; every
      allocation and free of the CPU allocator is a ``[memory]`` event with a signed size,
      and the peak is the maximum of their running sum in time order.

    Args:
        fn (Callable[[], None]): The forward (see :func:`forward_fn`).
        device (str): ``'cpu'`` or ``'cuda'``.

    Returns:
        float: The peak in MiB.
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
            errors[name] = _failure(err)
    return peaks


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what platform knows."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    """Installed version of ``package``, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_environment(settings: Settings) -> Dict[str, Any]:
    """What a result depends on, for the JSON output.

    Args:
        settings (Settings): Run options.

    Returns:
        Dict[str, Any]: Date, versions, device and CPU names, thread count, partition-op
        backend of DualFormer, and the run options.
    """
    env: Dict[str, Any] = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'python': platform.python_version(),
        'platform': platform.platform(),
        'torch': torch.__version__,
        'torch_cuda': torch.version.cuda,
        # Distribution names, which are not always the import names (mmseg).
        'packages': {name: _version(name) for name in ('dualformer_mm', 'mmengine', 'mmcv',
                                                       'mmpretrain', 'mmdet',
                                                       'mmsegmentation')},
        'cpu_model': _cpu_model(),
        'cpu_cores': os.cpu_count(),
        'threads': torch.get_num_threads(),
        'device': settings.device,
        'device_name': (torch.cuda.get_device_name() if settings.device == 'cuda'
                        else _cpu_model()),
        'settings': asdict(settings),
    }
    try:
        from dualformer_mm import ops
        # The partition ops run fused C++/CUDA kernels or the PyTorch reference; DualFormer's
        # speed depends on which, so the result must say.
        env['dualformer_ops'] = dict(mode=ops.get_backend(),
                                     extension=ops.extension_available(settings.device))
    except ImportError:
        env['dualformer_ops'] = None
    return env


def describe_settings(settings: Settings) -> str:
    """One line with the precision, format and compile options, for titles and headers."""
    parts = [f'{settings.amp_dtype} autocast' if settings.amp else 'fp32']
    parts.append('channels_last' if settings.channels_last else 'NCHW')
    parts.append('compiled' if settings.compile else 'eager')
    device = (torch.cuda.get_device_name() if settings.device == 'cuda'
              else f'CPU {_cpu_model()}, {settings.threads} thread'
              + ('s' if settings.threads > 1 else ''))
    return f'{device}; {", ".join(parts)}'


def build_all(names: Sequence[str], settings: Settings) -> Tuple[Dict[str, nn.Module],
                                                                  Dict[str, int]]:
    """Build, place and (optionally) compile the named models.

    Args:
        names (Sequence[str]): Keys of :data:`MODEL_ZOO`.
        settings (Settings): Run options.

    Returns:
        Tuple[Dict[str, nn.Module], Dict[str, int]]: The models to call, and their
        parameter counts.

    Raises:
        BenchmarkError: A model whose toolbox is missing (checked for all before building).
    """
    # Every toolbox checked first: a missing one is reported before minutes of building.
    for name in dict.fromkeys(names):
        _registry_or_error(name)
    models, params = {}, {}
    for name in dict.fromkeys(names):
        model = build_model(name)
        params[name] = count_params(model)
        models[name] = prepare_model(model, settings)
    return models, params


def write_json(path: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, replacing NaN (a failed model) by null."""
    import json

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    with open(path, 'w') as f:
        json.dump(clean(payload), f, indent=2)
        f.write('\n')


def write_outputs(args: Any, payload: Dict[str, Any], plot: Callable[[str], None]) -> None:
    """Write ``payload`` to ``args.json`` and call ``plot(args.png)``, for those given."""
    if args.json:
        write_json(args.json, payload)
        print(f'wrote {args.json}')
    if args.png:
        plot(args.png)
        print(f'wrote {args.png}')


def pyplot():
    """matplotlib.pyplot with a file-only backend (works without a display)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def model_colour(name: str) -> str:
    """A stable colour per model: DualFormer in blues, peers in warm colours."""
    blues = {'dualformer-t': '#9ecae1', 'dualformer-xs': '#4292c6', 'dualformer-s': '#2171b5',
             'dualformer-b': '#08306b'}
    peers = {'swin-t': '#d62728', 'convnext-t': '#ff7f0e', 'pvtv2-b1': '#bcbd22',
             'pvtv2-b2': '#8c564b'}
    return blues.get(name) or peers.get(name, '#7f7f7f')


def run_main(main: Callable[[], int]) -> None:
    """Run a script's ``main``, turning a :class:`BenchmarkError` into a clean exit 2."""
    try:
        sys.exit(main())
    except BenchmarkError as err:
        print(f'{osp.basename(sys.argv[0])}: error: {err}', file=sys.stderr)
        sys.exit(2)
