# Copyright (c) dualformer-mm contributors.
"""timm's versions of the peer backbones, with the outputs of their toolbox versions.

mmpretrain's Swin-T and ConvNeXt-T are also in timm, which stands in for mmpretrain where it
does not import (see :func:`.zoo.resolve_source`). :class:`TimmFeatures` gives timm's
``features_only`` networks the output contract of the toolbox versions, so that both do the
same work.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .errors import BenchmarkError

PIP_TIMM = 'pip install timm'


@dataclass(frozen=True)
class TimmSpec:
    """How to build a peer from timm, with the output contract of its toolbox version."""

    name: str  # the timm.create_model name
    nhwc: bool  # timm's feature maps are (N, H, W, C) (Swin) rather than (N, C, H, W)
    norm_eps: float  # eps of the toolbox version's output norms
    takes_size: bool  # the model is built for an input size (Swin's attention masks)
    pad_to: int = 1  # input sides padded up to a multiple of this, as the toolbox does


def timm_version() -> Optional[str]:
    """Version of the importable timm (None if it has none); ImportError when there is none."""
    import timm
    return getattr(timm, '__version__', None)


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


def build_timm(name: str, spec: TimmSpec, image_size: Optional[Tuple[int, int]]) -> nn.Module:
    """Build the timm version of model ``name``.

    Args:
        name (str): The model's name in the zoo, for messages.
        spec (TimmSpec): Which timm network, and its toolbox version's contract.
        image_size (Tuple[int, int], optional): (height, width) the model will only ever get;
            None builds it for any size.

    Returns:
        nn.Module: A :class:`TimmFeatures`.

    Raises:
        BenchmarkError: timm cannot build the network with these arguments.
    """
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
            f'timm {timm_version()} could not build {spec.name!r} for model {name!r} with '
            f'{kwargs} ({type(err).__name__}: {err}); these scripts are tested with timm '
            '1.0') from None
    return TimmFeatures(features, nhwc=spec.nhwc, eps=spec.norm_eps, pad_to=spec.pad_to)
