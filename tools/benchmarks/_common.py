# Copyright (c) dualformer-mm contributors.
"""Shared pieces of the backbone benchmarks (paper section 4.4, Table 6, and section 3.2).

Used by ``throughput.py`` (images/s, the comparison of Table 6 of "DualFormer: Dual Path
Transformer with Partition Attention"), ``resolution_scaling.py`` (latency and memory
against input size, the linear-complexity claim of MHPA in section 3.2) and ``train_step.py``
(training steps of the backbones and of Mask R-CNN):

* :data:`MODEL_ZOO`: the benchmarked backbones by name, DualFormer-T/XS/S/B and the peers
  Swin-T and ConvNeXt-T (mmpretrain, or timm where mmpretrain does not import, see
  :func:`resolve_source`) and PVTv2-B1/B2 (mmdet). Every model is the backbone alone, without
  head, in eval mode, returning the feature maps of its four stages with their output norms,
  as the detection and segmentation toolboxes use them; Swin-T is built with
  ``pad_small_map=True`` as in detection, which is what lets it take any input size.
* :func:`time_interleaved`: warm-up, then repeats in which every model runs once in turn,
  so that a burst of load on the machine hits all models alike; the median is reported.
* :func:`peak_memory_mib`: the peak memory one call allocates on top of what was already
  live (weights, input), on CPU from torch.profiler's allocation events, on CUDA from the
  caching allocator's statistics; :func:`state_mib` adds what a training step keeps live.
* :class:`TrainStep`: one training step (autocast forward and loss, backward with a
  GradScaler for fp16, optimizer step, gradients set to None).
* :class:`Target` / :func:`evaluate_targets`: the project's ratios to Swin-T, printed with
  the results of the setting they are defined at.
* :func:`add_common_args` / :func:`settings_from_args`: ``--device``, ``--threads``,
  ``--amp``/``--amp-dtype``, ``--channels-last``, ``--compile``, ``--warmup``, ``--repeat``,
  ``--iters``, ``--peer-source``, ``--json``, ``--png``.
* :func:`describe_environment`: versions, device, CPU model, threads and date for the JSON.

Nothing here imports a toolbox or timm at module level: a machine with only torch, timm and
this package runs the DualFormer and timm models.
"""
import argparse
import datetime
import importlib
import importlib.metadata
import math
import os
import os.path as osp
import platform
import re
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import (Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    # Run from a checkout without `pip install -e .`, the package still imports.
    sys.path.insert(0, ROOT)

REFERENCE_MODEL = 'swin-t'
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
COMPILE_WARMUP = 2  # untimed calls a compiled model needs at least
GRAD_SCALER_INIT = 2.0**16  # torch.amp.GradScaler's default initial loss scale
MIN_SIDE = 32  # one pixel of the stride-32 stage
# Where the peers that both an OpenMMLab toolbox and timm provide come from.
PEER_SOURCES = ('auto', 'toolbox', 'timm')


class BenchmarkError(Exception):
    """A problem with the user's request that the scripts report without a traceback."""


@dataclass(frozen=True)
class TimmSpec:
    """How to build a peer from timm, with the output contract of its toolbox version."""

    name: str  # the timm.create_model name
    nhwc: bool  # timm's feature maps are (N, H, W, C) (Swin) rather than (N, C, H, W)
    norm_eps: float  # eps of the toolbox version's output norms
    takes_size: bool  # the model is built for an input size (Swin's attention masks)
    pad_to: int = 1  # input sides padded up to a multiple of this, as the toolbox does


@dataclass(frozen=True)
class ModelSpec:
    """How to build one benchmarked backbone."""

    package: str  # the import that provides the class, named when it is missing
    install: str  # how to get it
    cfg: Dict[str, Any]
    timm: Optional[TimmSpec] = None  # the same network from timm, if timm has it


# The tested toolbox versions are pinned in requirements/stack.txt.
PIP_MMPRETRAIN = 'pip install mmpretrain==1.2.0'
PIP_MMDET = 'pip install mmdet==3.3.0'
PIP_TIMM = 'pip install timm'


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
                             pad_small_map=True),
                        TimmSpec('swin_tiny_patch4_window7_224', nhwc=True, norm_eps=1e-5,
                                 takes_size=True, pad_to=4)),
    'convnext-t': ModelSpec('mmpretrain', PIP_MMPRETRAIN,
                            dict(type='ConvNeXt', arch='tiny', out_indices=(0, 1, 2, 3),
                                 gap_before_final_norm=False),
                            TimmSpec('convnext_tiny', nhwc=False, norm_eps=1e-6,
                                     takes_size=False)),
    # mmdet's PVTv2 defaults (heads 1/2/5/8, MLP ratios 8/8/4/4, reduction 8/4/2/1) are
    # the paper's B-series; B1 and B2 differ only in depth.
    'pvtv2-b1': ModelSpec('mmdet', PIP_MMDET,
                          dict(type='PyramidVisionTransformerV2', embed_dims=64,
                               num_layers=[2, 2, 2, 2], out_indices=(0, 1, 2, 3))),
    'pvtv2-b2': ModelSpec('mmdet', PIP_MMDET,
                          dict(type='PyramidVisionTransformerV2', embed_dims=64,
                               num_layers=[3, 4, 6, 3], out_indices=(0, 1, 2, 3))),
}


@dataclass(frozen=True)
class Source:
    """Which implementation builds a model, and why that one."""

    package: str  # 'dualformer_mm', 'mmpretrain', 'mmdet' or 'timm'
    version: Optional[str]
    reason: str = ''  # set when timm stands in for a toolbox

    def describe(self) -> str:
        """E.g. ``'timm 1.0.31 (mmpretrain cannot be imported: ...)'``."""
        text = f'{self.package} {self.version or "(version unknown)"}'
        return f'{text} ({self.reason})' if self.reason else text


def _registry(package: str):
    """The MODELS registry of ``package``, with its models registered."""
    if package == 'dualformer_mm':
        import dualformer_mm  # noqa: F401  (registers DualFormer in mmengine's root MODELS)
        from mmengine.registry import MODELS
        return MODELS
    # Importing <package>.models runs the @MODELS.register_module decorators.
    importlib.import_module(f'{package}.models')
    return importlib.import_module(f'{package}.registry').MODELS


def _import_error(err: BaseException) -> str:
    """``'ModuleNotFoundError: No module named ...'``, on one line."""
    return f'{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ""}'


def _registry_or_error(name: str):
    """The registry that builds model ``name``, or an error naming the missing toolbox."""
    spec = MODEL_ZOO[name]
    try:
        return _registry(spec.package)
    except ImportError as err:
        raise BenchmarkError(
            f'model {name!r} needs the {spec.package} package, which cannot be imported '
            f'({_import_error(err)}); install it ({spec.install}) or leave the model '
            'out of --models') from None


def _timm_version() -> str:
    """Version of the importable timm; ImportError when there is none."""
    import timm
    return getattr(timm, '__version__', None) or package_version('timm')


def resolve_source(name: str, peer_source: str = 'auto') -> Source:
    """Choose the implementation of model ``name``, checking that it imports.

    DualFormer comes from this package and PVTv2 from mmdet. Swin-T and ConvNeXt-T come
    from mmpretrain or timm: with ``peer_source='auto'`` from mmpretrain when it imports,
    else from timm (and the returned source says why); ``'toolbox'`` and ``'timm'`` force one.

    Args:
        name (str): A key of :data:`MODEL_ZOO`.
        peer_source (str): One of :data:`PEER_SOURCES`. Defaults to ``'auto'``.

    Returns:
        Source: The package that will build the model, its version, and the reason when
        timm stands in for mmpretrain.

    Raises:
        BenchmarkError: Unknown name or source, or no implementation that imports.

    Example:
        >>> resolve_source('dualformer-t').package
        'dualformer_mm'
    """
    if name not in MODEL_ZOO:
        raise BenchmarkError(f'unknown model {name!r}; accepted names: {", ".join(MODEL_ZOO)}')
    if peer_source not in PEER_SOURCES:
        raise BenchmarkError(f'unknown peer source {peer_source!r}; accepted: '
                             f'{", ".join(PEER_SOURCES)}')
    spec = MODEL_ZOO[name]
    if spec.timm is None or peer_source == 'toolbox':
        _registry_or_error(name)
        return Source(spec.package, package_version(spec.package))
    if peer_source == 'timm':
        try:
            return Source('timm', _timm_version(), 'asked for with --peer-source timm')
        except ImportError as err:
            raise BenchmarkError(
                f'model {name!r} was asked for from timm (--peer-source timm), which cannot '
                f'be imported ({_import_error(err)}); install it ({PIP_TIMM}) or use '
                '--peer-source auto') from None
    try:
        _registry(spec.package)
        return Source(spec.package, package_version(spec.package))
    except ImportError as toolbox_err:
        try:
            return Source('timm', _timm_version(),
                          f'{spec.package} cannot be imported: {_import_error(toolbox_err)}')
        except ImportError as timm_err:
            raise BenchmarkError(
                f'model {name!r} needs the {spec.package} package or timm, and neither can be '
                f'imported ({spec.package}: {_import_error(toolbox_err)}; timm: '
                f'{_import_error(timm_err)}); install one ({spec.install}, or {PIP_TIMM}) or '
                'leave the model out of --models') from None


def resolve_sources(names: Sequence[str], settings: 'Settings') -> Dict[str, Source]:
    """:func:`resolve_source` of every model, so that a missing package is reported first."""
    return {name: resolve_source(name, settings.peer_source) for name in dict.fromkeys(names)}


def print_sources(sources: Dict[str, Source]) -> None:
    """Print which implementation each model comes from, one line per model."""
    for name, source in sources.items():
        print(f'  {name}: {source.describe()}', flush=True)


class TimmFeatures(nn.Module):
    """A timm ``features_only`` network with the toolbox version's outputs.

    timm returns the four stage outputs without the per-stage norms that mmpretrain's
    Swin and ConvNeXt apply (Swin's as (N, H, W, C)); this adds one LayerNorm per stage
    and returns contiguous (N, C, H, W) maps, so that both implementations do the same work.
    timm's Swin also rejects sides that are not a multiple of its patch size, which
    mmpretrain's pads at the bottom and right; so does this (``pad_to``).

    Args:
        features (nn.Module): ``timm.create_model(..., features_only=True)``.
        nhwc (bool): Whether ``features`` returns (N, H, W, C) maps.
        eps (float): eps of the LayerNorms.
        pad_to (int): Pad the input's height and width with zeros up to a multiple of
            this. Defaults to 1 (no padding).

    Example:
        >>> import timm  # doctest: +SKIP
        >>> net = TimmFeatures(timm.create_model('convnext_tiny', features_only=True),
        ...                    nhwc=False, eps=1e-6)  # doctest: +SKIP
        >>> [o.shape[1] for o in net(torch.rand(1, 3, 64, 64))]  # doctest: +SKIP
        [96, 192, 384, 768]
    """

    def __init__(self, features: nn.Module, nhwc: bool, eps: float, pad_to: int = 1) -> None:
        super().__init__()
        self.features = features
        self.nhwc = nhwc
        self.pad_to = pad_to
        self.norms = nn.ModuleList(
            nn.LayerNorm(c, eps=eps) for c in features.feature_info.channels())

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        pad_h, pad_w = (-x.shape[2] % self.pad_to, -x.shape[3] % self.pad_to)
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
        outs = []
        for feat, norm in zip(self.features(x), self.norms):
            if not self.nhwc:
                feat = feat.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
            outs.append(norm(feat).permute(0, 3, 1, 2).contiguous())  # -> (N, C, H, W)
        return tuple(outs)


def _build_timm(name: str, spec: TimmSpec,
                image_size: Optional[Tuple[int, int]]) -> nn.Module:
    """Build the timm version of model ``name``."""
    import timm
    kwargs: Dict[str, Any] = dict(pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))
    if spec.takes_size:
        # timm's Swin precomputes its shifted-window masks for one input size; without a
        # size it builds them on every forward for whatever it gets, which costs a little.
        if image_size:
            kwargs['img_size'] = tuple(-(-side // spec.pad_to) * spec.pad_to
                                       for side in image_size)
        else:
            kwargs['strict_img_size'] = False
    try:
        features = timm.create_model(spec.name, **kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise BenchmarkError(
            f'timm {_timm_version()} could not build {spec.name!r} for model {name!r} with '
            f'{kwargs} ({type(err).__name__}: {err}); these scripts are tested with timm '
            '1.0') from None
    return TimmFeatures(features, nhwc=spec.nhwc, eps=spec.norm_eps, pad_to=spec.pad_to)


def build_model(name: str, source: Optional[Source] = None,
                image_size: Optional[Tuple[int, int]] = None) -> nn.Module:
    """Build one backbone of :data:`MODEL_ZOO` on CPU, in eval mode.

    Args:
        name (str): A key of :data:`MODEL_ZOO`.
        source (Source, optional): From :func:`resolve_source`; resolved with ``'auto'``
            when not given.
        image_size (Tuple[int, int], optional): (height, width) the model will only ever
            get. Only timm's Swin uses it (its attention masks are built for that size);
            None builds it for any size.

    Returns:
        nn.Module: The backbone, randomly initialised (weights do not change the speed).

    Raises:
        BenchmarkError: Unknown name, or the package that provides the model is missing.

    Example:
        >>> model = build_model('dualformer-t')
        >>> [o.shape[1] for o in model(torch.rand(1, 3, 64, 64))]
        [64, 128, 256, 320]
    """
    source = source or resolve_source(name)
    spec = MODEL_ZOO[name]
    if source.package == 'timm':
        model = _build_timm(name, spec.timm, image_size)
    else:
        model = _registry_or_error(name).build(dict(spec.cfg))
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
    peer_source: str = 'auto'


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


def needs_grad_scaler(settings: Settings) -> bool:
    """Whether training under these settings scales its loss.

    fp16 autocast gives fp16 gradients, whose small values underflow to zero unless the
    loss is scaled up first (``torch.amp.GradScaler``), on any device. bf16 has fp32's
    exponent range and, like fp32, needs no scaling.

    Example:
        >>> s = Settings(device='cuda', threads=1, amp=True, amp_dtype='fp16',
        ...              channels_last=False, compile=False, warmup=0, repeat=1, iters=1)
        >>> needs_grad_scaler(s)
        True
    """
    return settings.amp and settings.amp_dtype == 'fp16'


class TrainStep:
    """One training step, as a closure for :func:`time_interleaved`.

    Runs ``loss_fn`` (the forward and the loss) under the run's autocast, back-propagates
    (through a ``torch.amp.GradScaler`` when :func:`needs_grad_scaler`), steps the optimizer
    and sets the gradients to None, as training loops do between steps. No host
    synchronisation of its own (the loss stays a tensor), so CUDA work queues as in
    training; a GradScaler checks for overflow on the host, as it does in training.

    Args:
        loss_fn (Callable[[], torch.Tensor]): Forward and loss, returning the scalar loss.
        optimizer (torch.optim.Optimizer): Steps the parameters that the loss depends on.
        settings (Settings): Run options (device, autocast).

    Example:
        >>> net = nn.Linear(4, 2)
        >>> s = Settings(device='cpu', threads=1, amp=False, amp_dtype=None,
        ...              channels_last=False, compile=False, warmup=0, repeat=1, iters=1)
        >>> step = TrainStep(lambda: net(torch.ones(3, 4)).square().mean(),
        ...                  torch.optim.AdamW(net.parameters()), s)
        >>> step(); step.scaler is None, net.weight.grad is None
        (True, True)
    """

    def __init__(self, loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                 settings: Settings) -> None:
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.settings = settings
        self.scaler = (torch.amp.GradScaler(settings.device, init_scale=GRAD_SCALER_INIT)
                       if needs_grad_scaler(settings) else None)
        self.settled_scale = GRAD_SCALER_INIT
        self.last_loss: Optional[torch.Tensor] = None  # kept in one buffer, see __call__

    def __call__(self) -> None:
        with autocast_context(self.settings):
            loss = self.loss_fn()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # skips the step if a gradient overflowed
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Copied into the same tensor every step: replacing it would free, inside the next
        # step, a block allocated before it, which torch.profiler warns about.
        if self.last_loss is None:
            self.last_loss = loss.detach().clone()
        else:
            self.last_loss.copy_(loss.detach())

    def last_loss_value(self) -> Optional[float]:
        """The loss of the latest step as a float (one host sync), None before any step."""
        return None if self.last_loss is None else float(self.last_loss)

    def settle(self, max_steps: int = 24) -> int:
        """Step until the GradScaler stops skipping steps; returns the steps run.

        A GradScaler starts at a loss scale that overflows fp16 gradients and halves it at
        every overflow, skipping that optimizer step; a training run does this in its first
        iterations only. Timing those cheaper steps would misrepresent the run, so they are
        run here, untimed. Without a GradScaler this does nothing.

        Args:
            max_steps (int): Give up after this many (the skips then show in
                :meth:`skipped_steps`). Defaults to 24.
        """
        if self.scaler is None:
            return 0
        for steps in range(1, max_steps + 1):
            before = self.scaler.get_scale()
            self()
            if self.scaler.get_scale() >= before:
                break
        self.settled_scale = self.scaler.get_scale()
        return steps

    def skipped_steps(self) -> int:
        """Optimizer steps the GradScaler skipped since :meth:`settle` (or the start).

        Each overflow halves the scale, and the scale only grows back after 2000 clean
        steps (the GradScaler's growth interval, far more than a benchmark runs), so the
        halvings count the skipped steps. 0 without a GradScaler.
        """
        if self.scaler is None:
            return 0
        return round(math.log2(self.settled_scale / self.scaler.get_scale()))


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


def _sync(device: str) -> None:
    """Wait for queued CUDA work, so the clock measures the forward and not its launch."""
    if device == 'cuda':
        torch.cuda.synchronize()


def _failure(err: BaseException) -> str:
    """A one-line description of a failed call (typically out of memory)."""
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
        fn (Callable[[], None]): The call, e.g. a forward (:func:`forward_fn`) or a
            training step (:class:`TrainStep`).
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


def package_version(package: str) -> Optional[str]:
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
        'packages': {name: package_version(name)
                     for name in ('dualformer_mm', 'mmengine', 'mmcv', 'mmpretrain', 'mmdet',
                                  'mmsegmentation', 'timm')},
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


def build_all(names: Sequence[str], settings: Settings,
              image_size: Optional[Tuple[int, int]] = None
              ) -> Tuple[Dict[str, nn.Module], Dict[str, int], Dict[str, Source]]:
    """Build, place and (optionally) compile the named models.

    Args:
        names (Sequence[str]): Keys of :data:`MODEL_ZOO`.
        settings (Settings): Run options (``peer_source`` among them).
        image_size (Tuple[int, int], optional): The one input size of the run, if there is
            one (see :func:`build_model`).

    Returns:
        Tuple[Dict[str, nn.Module], Dict[str, int], Dict[str, Source]]: The models to call,
        their parameter counts, and where each came from (printed here).

    Raises:
        BenchmarkError: A model whose package is missing (checked for all before building).
    """
    # Every package checked first: a missing one is reported before minutes of building.
    sources = resolve_sources(names, settings)
    print_sources(sources)
    models, params = {}, {}
    for name, source in sources.items():
        model = build_model(name, source, image_size)
        params[name] = count_params(model)
        models[name] = prepare_model(model, settings)
    return models, params, sources


def add_ratio(rows: List[Dict[str, Any]], key: str, ratio_key: str,
              reference: str = REFERENCE_MODEL) -> None:
    """Set ``row[ratio_key] = row[key] / reference's row[key]`` in every row, in place.

    None where the reference is missing or failed, or the row failed. Rows whose ``model``
    is ``reference`` get 1.0, so the ratio is always to the same run's Swin-T.
    """
    ref = next((r for r in rows if r['model'] == reference and not r.get('error')), None)
    base = ref[key] if ref else None
    usable = base is not None and math.isfinite(base) and base > 0
    for row in rows:
        value = row.get(key)
        ok = usable and not row.get('error') and value is not None and math.isfinite(value)
        row[ratio_key] = value / base if ok else None


@dataclass(frozen=True)
class Target:
    """A ratio to Swin-T that the project aims for, printed with the results.

    Args:
        model (str): The model it is about.
        metric (str): The row key compared with the reference's (e.g. ``'img_per_s'``).
        comparison (str): ``'>='`` (at least ``bound`` times the reference) or ``'<='``.
        bound (float): The ratio.
        label (str): What the metric is, for the printed line (empty: the script's main
            figure).

    Example:
        >>> t = Target('dualformer-s', 'peak_mib', '<=', 1.0, 'peak memory')
        >>> rows = [dict(model='dualformer-s', peak_mib=90.0),
        ...         dict(model='swin-t', peak_mib=100.0)]
        >>> [(r['ratio'], r['met']) for r in evaluate_targets(rows, [t], at_setting=True)]
        [(0.9, True)]
    """

    model: str
    metric: str
    comparison: str
    bound: float
    label: str = ''

    def __post_init__(self) -> None:
        if self.comparison not in ('>=', '<='):
            raise ValueError(f"comparison must be '>=' or '<=', got {self.comparison!r}")


def at_target_setting(target_setting: Dict[str, Any], settings: Settings, **run: Any) -> bool:
    """Whether a run is at the setting its targets are defined at.

    Args:
        target_setting (dict): The setting: ``device`` and ``amp``, plus run values such as
            ``size`` and ``batch``.
        settings (Settings): The run's options (``device``, ``amp``).
        **run: The run's values of the other keys of ``target_setting``.

    Returns:
        bool: True when every key of ``target_setting`` matches.

    Example:
        >>> s = Settings(device='cpu', threads=2, amp=False, amp_dtype=None,
        ...              channels_last=False, compile=False, warmup=1, repeat=1, iters=1)
        >>> at_target_setting(dict(device='cpu', amp=False, batch=32), s, batch=16)
        False
    """
    actual = dict(run, device=settings.device, amp=settings.amp)
    return all(actual.get(key) == value for key, value in target_setting.items())


def evaluate_targets(rows: List[Dict[str, Any]], targets: Sequence[Target], at_setting: bool,
                     reference: str = REFERENCE_MODEL) -> List[Dict[str, Any]]:
    """The targets that this run can evaluate (both models measured, without error).

    Args:
        rows (List[Dict]): Result rows with ``model``, ``error`` and the targets' metrics.
        targets (Sequence[Target]): What to check.
        at_setting (bool): Whether the run is at the setting the targets are defined at;
            recorded, and printed by :func:`format_target` when it is not.
        reference (str): The model the ratios are to. Defaults to Swin-T.

    Returns:
        List[Dict[str, Any]]: Per evaluated target: ``model``, ``reference``, ``metric``,
        ``label``, ``min_ratio`` (for ``>=``) or ``max_ratio`` (for ``<=``), ``ratio``,
        ``value``, ``reference_value``, ``met`` and ``at_target_setting``.
    """
    by_name = {r['model']: r for r in rows if not r.get('error')}
    results = []
    for t in targets:
        if t.model not in by_name or reference not in by_name:
            continue
        value, base = by_name[t.model].get(t.metric), by_name[reference].get(t.metric)
        if value is None or base is None or not (math.isfinite(value) and math.isfinite(base)
                                                 and base > 0):
            continue
        ratio = value / base
        bound_key = 'min_ratio' if t.comparison == '>=' else 'max_ratio'
        results.append({'model': t.model, 'reference': reference, 'metric': t.metric,
                        'label': t.label, bound_key: t.bound, 'ratio': ratio, 'value': value,
                        'reference_value': base,
                        'met': ratio >= t.bound if t.comparison == '>=' else ratio <= t.bound,
                        'at_target_setting': at_setting})
    return results


def format_target(result: Dict[str, Any], setting: str) -> str:
    """One line such as ``target dualformer-s >= 1.1x swin-t: 1.42x, met``.

    Args:
        result (Dict[str, Any]): One entry of :func:`evaluate_targets`.
        setting (str): The target setting in words, named when the run is not at it.
    """
    if 'min_ratio' in result:
        comparison, bound = '>=', result['min_ratio']
    else:
        comparison, bound = '<=', result['max_ratio']
    label = f' {result["label"]}' if result['label'] else ''
    where = '' if result['at_target_setting'] else (
        f' (this run is not at the target setting, {setting})')
    return (f'target {result["model"]}{label} {comparison} {bound}x {result["reference"]}: '
            f'{result["ratio"]:.2f}x, {"met" if result["met"] else "NOT met"}{where}')


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
