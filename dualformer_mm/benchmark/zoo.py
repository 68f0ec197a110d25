# Copyright (c) dualformer-mm contributors.
"""The benchmarked backbones by name, and where each comes from.

:data:`MODEL_ZOO` holds DualFormer-T/XS/S/B and the peers Swin-T and ConvNeXt-T (mmpretrain,
or timm where mmpretrain does not import, see :func:`resolve_source`) and PVTv2-B1/B2
(mmdet). Every model is the backbone alone, without head, in eval mode, returning the feature
maps of its four stages with their output norms, as the detection and segmentation toolboxes
use them; Swin-T is built with ``pad_small_map=True`` as in detection, which is what lets it
take any input size.
"""
import importlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from mmengine.registry import DefaultScope
from torch import nn

from ..utils.environment import package_version
from .errors import BenchmarkError, describe_import_error
from .timm_features import PIP_TIMM, TimmSpec, build_timm, timm_version

REFERENCE_MODEL = 'swin-t'
# Where the peers that both an OpenMMLab toolbox and timm provide come from.
PEER_SOURCES = ('auto', 'toolbox', 'timm')
# The tested toolbox versions are pinned in requirements/stack.txt.
PIP_MMPRETRAIN = 'pip install mmpretrain==1.2.0'
PIP_MMDET = 'pip install mmdet==3.3.0'


@dataclass(frozen=True)
class ModelSpec:
    """How to build one benchmarked backbone."""

    package: str  # the import that provides the class, named when it is missing
    install: str  # how to get it
    cfg: Dict[str, Any]
    timm: Optional[TimmSpec] = None  # the same network from timm, if timm has it


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


def _registry_or_error(name: str):
    """The registry that builds model ``name``, or an error naming the missing toolbox."""
    spec = MODEL_ZOO[name]
    try:
        return _registry(spec.package)
    except ImportError as err:
        raise BenchmarkError(
            f'model {name!r} needs the {spec.package} package, which cannot be imported '
            f'({describe_import_error(err)}); install it ({spec.install}) or leave the model '
            'out of --models') from None


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
            return Source('timm', timm_version(), 'asked for with --peer-source timm')
        except ImportError as err:
            raise BenchmarkError(
                f'model {name!r} was asked for from timm (--peer-source timm), which cannot '
                f'be imported ({describe_import_error(err)}); install it ({PIP_TIMM}) or use '
                '--peer-source auto') from None
    try:
        _registry(spec.package)
        return Source(spec.package, package_version(spec.package))
    except ImportError as toolbox_err:
        try:
            return Source('timm', timm_version(),
                          f'{spec.package} cannot be imported: '
                          f'{describe_import_error(toolbox_err)}')
        except ImportError as timm_err:
            raise BenchmarkError(
                f'model {name!r} needs the {spec.package} package or timm, and neither can be '
                f'imported ({spec.package}: {describe_import_error(toolbox_err)}; timm: '
                f'{describe_import_error(timm_err)}); install one ({spec.install}, or '
                f'{PIP_TIMM}) or leave the model out of --models') from None


def resolve_sources(names: Sequence[str], peer_source: str = 'auto') -> Dict[str, Source]:
    """:func:`resolve_source` of every model, so that a missing package is reported first."""
    return {name: resolve_source(name, peer_source) for name in dict.fromkeys(names)}


def print_sources(sources: Dict[str, Source]) -> None:
    """Print which implementation each model comes from, one line per model."""
    for name, source in sources.items():
        print(f'  {name}: {source.describe()}', flush=True)


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
        >>> import torch
        >>> model = build_model('dualformer-t')
        >>> [o.shape[1] for o in model(torch.rand(1, 3, 64, 64))]
        [64, 128, 256, 320]
    """
    source = source or resolve_source(name)
    spec = MODEL_ZOO[name]
    if source.package == 'timm':
        model = build_timm(name, spec.timm, image_size)
    else:
        registry = _registry_or_error(name)
        # mmengine builds from the current default scope's registry; a runner of another
        # toolbox in the same process may have left one (mmdet's Swin takes no `arch`).
        with DefaultScope.overwrite_default_scope(registry.scope):
            model = registry.build(dict(spec.cfg))
    # Statement, not `model = model.eval()`: mmpretrain's Swin and ConvNeXt train() return None.
    model.eval()
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
