#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Relative log amplitude of Fourier-transformed feature maps, layer by layer (paper section
4.4, "Fourier Analysis", Figure 5).

The paper follows Park & Kim, "How Do Vision Transformers Work?" (ICLR 2022): for the output
feature map of every block, take the 2-D FFT of each channel, take the log amplitude, average
it over channels and images, and read it along the diagonal from the zero frequency to the
highest one (normalised frequency 0 to pi), relative to the zero-frequency value. Figure 5
plots that relative value at the highest frequency against the normalised depth; a larger
value means the block keeps more high-frequency content. Here every Dual Attention Block of
every stage of a DualFormer is measured through forward hooks, beside one peer backbone:

- ``swin-t``: mmpretrain ``SwinTransformer`` (arch ``tiny``); its blocks output token
  sequences (B, L, C), reshaped to the stage's grid given to each block (``hw_shape``),
- ``convnext-t``: mmpretrain ``ConvNeXt`` (arch ``tiny``); blocks output (B, C, H, W),
- ``pvtv2-b2``: mmdet ``PyramidVisionTransformerV2`` (embed_dims 64, layers 3-4-6-3);
  token sequences as Swin's,
- ``none``: DualFormer alone.

The paper's peer is a ViT; a plain ViT has no stages, so the peers here are the hierarchical
backbones the paper compares against in its tables.

Honesty note: no trained weights can be downloaded here. Without ``--checkpoint`` (and
``--peer-checkpoint``) the curves describe randomly initialised networks, not the trained ones
of the paper's Figure 5, and say nothing about whether training makes DualFormer keep more
high frequencies. The tool prints and records this with its results.

Examples:
    python tools/analysis/fourier.py --png work_dirs/fourier/fourier.png \\
        --json work_dirs/fourier/fourier.json
    python tools/analysis/fourier.py --config configs/mmpretrain/dualformer_s_in1k.py \\
        --checkpoint dualformer_s_in1k.pth --peer convnext-t --img-dir imagenet/val --images 64
"""
import argparse
import json
import math
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch import Tensor

from dualformer_mm.visualization.partitions import (
    build_backbone, config_normalization, load_backbone_weights, preprocess_image,
    quiet_mmengine, synthetic_image)

PEERS = {
    'swin-t': 'Swin-T (mmpretrain SwinTransformer, arch tiny)',
    'convnext-t': 'ConvNeXt-T (mmpretrain ConvNeXt, arch tiny)',
    'pvtv2-b2': 'PVTv2-B2 (mmdet PyramidVisionTransformerV2)',
    'none': 'no peer',
}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
MIN_SIZE = 64  # stride-32 stages must keep a 2x2 map, the smallest with a non-zero frequency
RANDOM_INIT_NOTE = ('{model} is randomly initialised: its curve describes an untrained '
                    'network, not the trained model of the paper\'s Figure 5 (no trained '
                    'weights can be downloaded here; pass a checkpoint to measure one).')

# One measured block: name, stage, block index, module, and its output layout.
BlockSpec = Tuple[str, int, int, nn.Module, str]


def diagonal_log_amplitude(features: Tensor, eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Log amplitude of the 2-D spectrum along its diagonal, averaged over channels.

    The walk from the zero frequency towards the corner of the fftshifted spectrum is read
    directly from the unshifted one: index ``k`` of an axis of length ``N`` is the frequency
    ``2*pi*k/N``, so indices ``0..N//2`` cover 0 to pi (pi itself for even ``N``).

    Args:
        features (Tensor): Feature maps (B, C, H, W), H and W at least 2.
        eps (float): Added to the amplitude before the log, so empty frequencies stay
            finite. Defaults to 1e-6.

    Returns:
        tuple[Tensor, Tensor]: Normalised frequencies (n, ) in [0, pi] and the log
        amplitudes (B, n), with ``n = min(H, W) // 2 + 1``.
    """
    if features.dim() != 4:
        raise ValueError(f'features must be (B, C, H, W), got shape {tuple(features.shape)}')
    height, width = features.shape[-2:]
    if min(height, width) < 2:
        raise ValueError(f'a {height}x{width} feature map has no non-zero frequency; it needs '
                         'at least 2x2 (use a larger input size)')
    spectrum = torch.fft.fft2(features.double())
    log_amp = torch.log(spectrum.abs() + eps).mean(dim=1)  # mean of logs, as Park & Kim
    steps = min(height, width) // 2
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    rows = torch.round(t * (height // 2)).long()
    cols = torch.round(t * (width // 2)).long()
    # Mean of the two axes' normalised frequencies: exactly 2*pi*k/N on square maps.
    freqs = math.pi * (rows.double() / (height / 2) + cols.double() / (width / 2)) / 2
    return freqs.clamp(max=math.pi), log_amp[:, rows, cols]


def relative_log_amplitude(features: Tensor, eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Park & Kim's relative log amplitude of feature maps (Figure 5's quantity).

    Args:
        features (Tensor): Feature maps (B, C, H, W).
        eps (float): See :func:`diagonal_log_amplitude`.

    Returns:
        tuple[Tensor, Tensor]: Normalised frequencies (n, ) in [0, pi] and the log amplitude
        averaged over images and channels minus its zero-frequency value (n, ); the last
        entry is the highest frequency.

    Example:
        >>> freqs, delta = relative_log_amplitude(torch.randn(4, 8, 16, 16))
        >>> delta.shape, float(delta[0])
        (torch.Size([9]), 0.0)
    """
    freqs, log_amp = diagonal_log_amplitude(features, eps)
    profile = log_amp.mean(dim=0)
    return freqs, profile - profile[0]


def dualformer_blocks(backbone: nn.Module) -> List[BlockSpec]:
    """Every Dual Attention Block of a DualFormer; they output (B, C, H, W)."""
    return [(f'stages.{i}.blocks.{j}', i, j, block, 'nchw')
            for i, stage in enumerate(backbone.stages) for j, block in enumerate(stage.blocks)]


def build_peer(name: str, size: int) -> Tuple[nn.Module, List[BlockSpec]]:
    """Build a peer backbone of :data:`PEERS` with its own init, and list its blocks."""
    if name not in PEERS or name == 'none':
        raise ValueError(f'--peer must be one of {sorted(PEERS)}, got {name!r}')
    with quiet_mmengine():
        if name == 'swin-t':
            from mmpretrain.models.backbones import SwinTransformer
            # Maps smaller than the 7x7 window (small --size) are padded inside the attention.
            model = SwinTransformer(arch='tiny', img_size=size, pad_small_map=True)
            blocks = [(f'stages.{i}.blocks.{j}', i, j, block, 'nlc')
                      for i, stage in enumerate(model.stages)
                      for j, block in enumerate(stage.blocks)]
        elif name == 'convnext-t':
            from mmpretrain.models.backbones import ConvNeXt
            model = ConvNeXt(arch='tiny')
            blocks = [(f'stages.{i}.{j}', i, j, block, 'nchw')
                      for i, stage in enumerate(model.stages) for j, block in enumerate(stage)]
        else:
            from mmdet.models.backbones import PyramidVisionTransformerV2
            model = PyramidVisionTransformerV2(embed_dims=64, num_layers=[3, 4, 6, 3])
            # Each entry of ``layers`` is [patch embedding, blocks, norm].
            blocks = [(f'layers.{i}.1.{j}', i, j, block, 'nlc')
                      for i, layer in enumerate(model.layers) for j, block in enumerate(layer[1])]
        model.init_weights()
    model.eval()  # not chained: some backbones' train() returns None
    return model, blocks


def as_feature_map(output: Tensor, layout: str, args: tuple, kwargs: dict) -> Tensor:
    """A block's output as (B, C, H, W); token sequences use the grid passed to the block."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if layout == 'nchw':
        return output
    # Swin and PVT blocks are called as block(x, hw_shape): the stage's true (padded-away)
    # resolution, which the token count alone cannot tell for non-square inputs.
    hw_shape = args[1] if len(args) > 1 else kwargs.get('hw_shape')
    if hw_shape is None:
        raise RuntimeError('a token-sequence block was called without its hw_shape')
    height, width = hw_shape
    batch, length, channels = output.shape
    if length != height * width:
        raise RuntimeError(f'block output has {length} tokens, expected {height}x{width}')
    return output.transpose(1, 2).reshape(batch, channels, height, width)


class SpectrumRecorder:
    """Accumulates each block's per-image diagonal log amplitude over forward passes."""

    def __init__(self, blocks: Sequence[BlockSpec], eps: float = 1e-6) -> None:
        self.blocks = list(blocks)
        self.eps = eps
        self.sums: Dict[str, Tensor] = {}
        self.freqs: Dict[str, Tensor] = {}
        self.shapes: Dict[str, Tuple[int, int]] = {}
        self.count: Dict[str, int] = {}
        self.handles = []

    def hook(self, name: str, layout: str) -> Callable:
        """The forward hook of one block."""
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            features = as_feature_map(output, layout, args, kwargs)
            freqs, log_amp = diagonal_log_amplitude(features, self.eps)
            self.sums[name] = self.sums.get(name, 0) + log_amp.sum(0).cpu()
            self.count[name] = self.count.get(name, 0) + log_amp.shape[0]
            self.freqs[name] = freqs
            self.shapes[name] = tuple(features.shape[-2:])
        return record

    def __enter__(self) -> 'SpectrumRecorder':
        for name, _, _, module, layout in self.blocks:
            self.handles.append(
                module.register_forward_hook(self.hook(name, layout), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def results(self) -> List[Dict]:
        """One dict per block, in depth order: relative log amplitude vs frequency."""
        rows = []
        total = len(self.blocks)
        for index, (name, stage, block, _, _) in enumerate(self.blocks):
            if name not in self.sums:
                raise RuntimeError(f'block {name} never ran; is the model wired as expected?')
            profile = self.sums[name] / self.count[name]
            delta = (profile - profile[0]).tolist()
            rows.append(dict(layer=index, module=name, stage=stage, block=block,
                             depth=(index + 1) / total, shape=list(self.shapes[name]),
                             freqs=self.freqs[name].tolist(), delta=delta,
                             delta_high=delta[-1]))
        return rows


@torch.no_grad()
def measure(model: nn.Module, blocks: Sequence[BlockSpec], batches: Sequence[Tensor],
            device: str = 'cpu') -> List[Dict]:
    """Run ``model`` on every batch and return the relative log amplitude of each block.

    Args:
        model (nn.Module): A backbone taking (B, 3, H, W).
        blocks (Sequence): The blocks to measure, as ``(name, stage, block, module,
            layout)`` with layout ``'nchw'`` or ``'nlc'``.
        batches (Sequence[Tensor]): Normalised image batches.
        device (str): Device to run on. Defaults to ``'cpu'``.

    Returns:
        list[dict]: Per block in depth order: ``layer``, ``module``, ``stage``, ``block``,
        ``depth`` (normalised, (layer + 1) / number of blocks), ``shape``, ``freqs``,
        ``delta`` (relative log amplitude per frequency) and ``delta_high`` (its last entry).
    """
    model.to(device)
    model.eval()
    with SpectrumRecorder(blocks) as recorder:
        for batch in batches:
            model(batch.to(device))
    return recorder.results()


def load_images(args: argparse.Namespace) -> List[np.ndarray]:
    """``--images`` RGB uint8 images, ``--size`` square: synthetic or from ``--img-dir``."""
    size = args.size
    if not args.img_dir:
        return [synthetic_image((size, size), seed=args.seed + i) for i in range(args.images)]
    files = sorted(f for f in os.listdir(args.img_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise SystemExit(f'--img-dir: no images ({", ".join(IMAGE_EXTENSIONS)}) in '
                         f'{args.img_dir!r}')
    if len(files) > args.images:
        print(f'using the first {args.images} of {len(files)} images in {args.img_dir} '
              '(raise --images for more)')
    images = []
    for name in files[:args.images]:
        with Image.open(osp.join(args.img_dir, name)) as img:
            img = img.convert('RGB')
            # Shorter side to --size, then the centre square, as evaluation pipelines crop.
            scale = size / min(img.width, img.height)
            width = max(size, round(img.width * scale))
            height = max(size, round(img.height * scale))
            img = img.resize((width, height), Image.BILINEAR)
            left, top = (width - size) // 2, (height - size) // 2
            images.append(np.asarray(img.crop((left, top, left + size, top + size))))
    return images


def make_batches(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float],
                 rgb: bool, batch_size: int) -> List[Tensor]:
    """Normalise the images and group them in batches."""
    tensors = [preprocess_image(img, mean, std, rgb) for img in images]
    return [torch.cat(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def format_table(results: Dict[str, Dict]) -> str:
    """The per-layer table: model, layer, stage, depth, map size and high-frequency value."""
    lines = [f"{'model':<12} {'layer':>5} {'stage':>5} {'block':>5} {'depth':>6} "
             f"{'map':>7} {'fmax/pi':>7} {'dlogamp(fmax)':>13}"]
    for key, entry in results.items():
        for row in entry['layers']:
            shape = f"{row['shape'][0]}x{row['shape'][1]}"
            lines.append(f"{key:<12} {row['layer']:>5} {row['stage'] + 1:>5} "
                         f"{row['block'] + 1:>5} {row['depth']:>6.3f} {shape:>7} "
                         f"{row['freqs'][-1] / math.pi:>7.3f} {row['delta_high']:>13.3f}")
    return '\n'.join(lines)


def plot(results: Dict[str, Dict], out_file: str, freq_curves: bool = True) -> None:
    """(a) high-frequency relative log amplitude vs depth; (b) curves vs frequency."""
    from matplotlib import cm
    from matplotlib.figure import Figure

    num = 1 + (len(results) if freq_curves else 0)
    fig = Figure(figsize=(4.2 * num, 3.6), layout='constrained')
    axes = fig.subplots(1, num, squeeze=False)[0]
    ax = axes[0]
    for (key, entry), marker in zip(results.items(), 'os^'):
        depth = [row['depth'] for row in entry['layers']]
        value = [row['delta_high'] for row in entry['layers']]
        ax.plot(depth, value, marker=marker, ms=4, label=f"{entry['label']}, {entry['weights']}")
    ax.set_xlabel('normalised depth')
    ax.set_ylabel(r'$\Delta$ log amplitude at the highest frequency')
    ax.set_title('(a) high-frequency amplitude by depth', fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if freq_curves:
        for ax, (key, entry), letter in zip(axes[1:], results.items(), 'bcd'):
            # The last block of each stage: a few layers spread over the whole depth.
            rows = [row for i, row in enumerate(entry['layers'])
                    if i + 1 == len(entry['layers'])
                    or entry['layers'][i + 1]['stage'] != row['stage']]
            for row in rows:
                freqs = np.asarray(row['freqs']) / math.pi
                ax.plot(freqs, row['delta'], color=cm.viridis(row['depth']),
                        label=f"stage {row['stage'] + 1} (depth {row['depth']:.2f})")
            ax.set_xlabel(r'normalised frequency ($\times\pi$)')
            ax.set_ylabel(r'$\Delta$ log amplitude')
            ax.set_title(f"({letter}) {entry['label']}: last block of each stage", fontsize=10)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=110)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Relative log amplitude of Fourier-transformed feature maps per block '
        '(paper Figure 5, after Park & Kim 2022), for DualFormer and a peer backbone.')
    parser.add_argument('--config', default='configs/mmpretrain/dualformer_t_in1k.py',
                        help='a DualFormer config (default: DualFormer-T, ImageNet)')
    parser.add_argument('--checkpoint', help='DualFormer checkpoint (random init without it)')
    parser.add_argument('--peer', default='swin-t', choices=list(PEERS),
                        help='peer backbone (default swin-t; none to skip)')
    parser.add_argument('--peer-checkpoint', help='checkpoint of the peer backbone')
    parser.add_argument('--images', type=int, default=8,
                        help='number of images (synthetic, or the first of --img-dir)')
    parser.add_argument('--img-dir', help='folder of images (synthetic scenes without it)')
    parser.add_argument('--size', type=int, default=224,
                        help=f'square input size, >= {MIN_SIZE} (default 224)')
    parser.add_argument('--batch-size', type=int, default=4, help='images per forward pass')
    parser.add_argument('--json', help='write the results as JSON')
    parser.add_argument('--png', help='write the plot')
    parser.add_argument('--no-freq-curves', action='store_true',
                        help='plot only (a), not the curves vs frequency')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic images')
    parser.add_argument('--device', default='cpu', help='device (default cpu)')
    args = parser.parse_args(argv)
    if args.size < MIN_SIZE:
        parser.error(f'--size must be >= {MIN_SIZE} (stride-32 stages need a 2x2 map), '
                     f'got {args.size}')
    if args.images < 1:
        parser.error(f'--images must be >= 1, got {args.images}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.img_dir and not osp.isdir(args.img_dir):
        parser.error(f'--img-dir: no such folder {args.img_dir!r}')
    if args.peer_checkpoint and args.peer == 'none':
        parser.error('--peer-checkpoint needs a --peer other than none')
    for name in ('config', 'checkpoint', 'peer_checkpoint'):
        path = getattr(args, name)
        if path and not osp.isfile(path):
            parser.error(f"--{name.replace('_', '-')}: no such file {path!r}")
    return args


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    mean, std, rgb = config_normalization(args.config)
    # The peers were trained with ImageNet normalisation too, so they share the inputs.
    batches = make_batches(load_images(args), mean, std, rgb, args.batch_size)
    num_images = sum(len(b) for b in batches)

    notes = []
    backbone = build_backbone(args.config, args.checkpoint)
    label = f'DualFormer ({osp.splitext(osp.basename(args.config))[0]})'
    results = {'dualformer': dict(
        label=label, weights=args.checkpoint or 'random init',
        layers=measure(backbone, dualformer_blocks(backbone), batches, args.device))}
    if not args.checkpoint:
        notes.append(RANDOM_INIT_NOTE.format(model=label))
    if args.peer != 'none':
        peer, blocks = build_peer(args.peer, args.size)
        if args.peer_checkpoint:
            with quiet_mmengine():
                load_backbone_weights(peer, args.peer_checkpoint)
        else:
            notes.append(RANDOM_INIT_NOTE.format(model=PEERS[args.peer]))
        results[args.peer] = dict(label=PEERS[args.peer].split(' (')[0],
                                  weights=args.peer_checkpoint or 'random init',
                                  layers=measure(peer, blocks, batches, args.device))

    source = args.img_dir or 'synthetic shapes (dualformer_mm.demo)'
    print(f'relative log amplitude of the block outputs\' spectra, {num_images} images from '
          f'{source} at {args.size}x{args.size}; dlogamp(fmax) = log amplitude at the '
          'highest frequency of the map (fmax: pi on even sizes) minus at zero, averaged over '
          'channels and images')
    print(format_table(results))
    for note in notes:
        print(f'NOTE: {note}')
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        meta = dict(notes=notes, settings=dict(
            config=args.config, checkpoint=args.checkpoint, peer=args.peer,
            peer_checkpoint=args.peer_checkpoint, images=num_images, source=source,
            size=args.size), models=results)
        with open(args.json, 'w') as f:
            json.dump(meta, f, indent=1)
        print(f'wrote {args.json}')
    if args.png:
        plot(results, args.png, freq_curves=not args.no_freq_curves)
        print(f'wrote {args.png}')
    return results


if __name__ == '__main__':
    main()
