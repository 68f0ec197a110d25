#!/usr/bin/env python
# Copyright (c) dualformer-mm contributors.
"""Training speed and memory of DualFormer and its peers: backbone steps and Mask R-CNN.

The paper's Table 6 (section 4.4 of "DualFormer: Dual Path Transformer with Partition
Attention") compares inference speed; users pay for training too. This script times full
training steps (forward, backward, optimizer step) side by side, every model once per round
in turn after warm-up, as ``throughput.py`` does for inference (see
``dualformer_mm/benchmark/measure.py``), in two parts (``--parts``, both by default):

* ``backbone``: every model of ``--models`` with a linear classification head (global
  average pool of the last stage's output, ``nn.Linear(C, 1000)``), in train mode (BatchNorm
  and LayerNorm layers as the models have them, stochastic depth on), cross-entropy against
  random labels, AdamW (lr 1e-3, weight decay 0.05), gradients set to None after each step.
  All models get the same batch (``--batch`` 16 of ``--size`` 224 by default). It reports the
  median step time over ``--repeat`` rounds (3 by default), images/s and the ratio to Swin-T's,
  and the peak memory of a step and its ratio to Swin-T's.
* ``detector``: a Mask R-CNN training iteration of each model of ``--det-models``, built from
  the configs users train: ``configs/mmdet/mask_rcnn_dualformer_s_1x.py`` (SyncBN reverted to
  BatchNorm, as the Runner does outside distributed runs) and mmdet's
  ``swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``, weights initialised by ``init_weights``
  with no checkpoint. The batch is generated COCO-style data (``--det-batch`` 2 images of
  ``--det-size`` 800x1333, 7 boxes with masks per image, COCO's average); an iteration is what
  mmengine's ``train_step`` does: data preprocessor (normalise, pad to a multiple of 32), the
  loss forward, backward and the config's AdamW step. It reports time per iteration, images/s,
  the ratio to Swin-T, peak memory, and the backbone's share: the forward and backward of the
  backbone alone on the same padded batch, timed in the same rounds, over the iteration time.
  On a CPU the RPN and RoI heads take most of an iteration, so a faster backbone is worth
  less to a detection user than the backbone table suggests; the share says how much less.

Peak memory (``peak MiB``) is what a training process holds at the step's peak: the state
kept between steps (weights, buffers, AdamW's two moments; for the backbones also the batch,
while the detectors' preprocessor makes theirs inside the iteration) plus the most the step
allocates on top (activations, gradients, temporaries; see
``dualformer_mm.benchmark.measure.peak_memory_mib`` for exactly what is counted, on CPU and on
CUDA). ``--det-rois`` lowers the RoIs the box and mask heads train on (512 per image in the
configs) for quick checks of the script only.

``--amp`` runs the forward and the loss under ``torch.autocast`` (bf16 on CPU, fp16 on CUDA
by default, ``--amp-dtype`` to choose). fp16 scales the loss with a ``torch.amp.GradScaler``;
the steps it skips while it finds its scale, as a training run does at its start, run before
the warm-up, untimed (a skip after that is printed as a warning). bf16 needs no scaling.
On CPU the detector part runs in fp32 only: mmcv's CPU ops (the RPN's nms) reject bf16.
Swin-T and ConvNeXt-T of the backbone part come from mmpretrain, or from timm where
mmpretrain does not import (``--peer-source``); the Mask R-CNNs need mmdet.

The script prints every model's training images/s and peak memory over Swin-T's in the same
run.

Example:
    python tools/benchmarks/train_step.py --threads 2        # both parts, the defaults
    python tools/benchmarks/train_step.py --parts backbone --models dualformer-xs \\
        dualformer-s swin-t --json work_dirs/train.json --png work_dirs/train.png
    python tools/benchmarks/train_step.py --device cuda --amp --batch 128 --det-batch 2
"""
import argparse
import math
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dualformer_mm.benchmark import detectors, options, output, ratios, train_report
from dualformer_mm.benchmark.detectors import DET_CONFIGS, INSTANCES_PER_IMAGE
from dualformer_mm.benchmark.errors import run_main
from dualformer_mm.benchmark.measure import (median, peak_memory_all, state_mib,
                                             time_interleaved, training_state)
from dualformer_mm.benchmark.options import Settings, autocast_context, parse_size
from dualformer_mm.benchmark.training import (NUM_CLASSES, LinearClassifier, TrainStep,
                                              settle_all)
from dualformer_mm.benchmark.zoo import (MODEL_ZOO, REFERENCE_MODEL, build_model, count_params,
                                         package_version, print_sources, resolve_sources)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))  # holds configs/
PARTS = ('backbone', 'detector')
DEFAULT_MODELS = list(MODEL_ZOO)
LR, WEIGHT_DECAY = 1e-3, 0.05  # AdamW of the backbone part (the value does not change speed)
DEFAULT_DET_MODELS = ['dualformer-s', 'swin-t']


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of the script; returns the namespace with ``settings`` added."""
    parser = argparse.ArgumentParser(
        description='Training step time and peak memory of DualFormer and peer backbones '
        '(linear head) and of their Mask R-CNNs.')
    parser.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS),
                        help='what to measure: backbone (classification training step) and/or '
                        'detector (Mask R-CNN iteration) (default: both)')
    options.add_model_arg(parser, DEFAULT_MODELS)
    parser.add_argument('--batch', type=options.positive_int(1), default=16,
                        help='images per backbone step (default: %(default)s)')
    parser.add_argument('--size', type=options.positive_int(options.MIN_SIDE), default=224,
                        help='square input side of the backbone part (default: %(default)s)')
    parser.add_argument('--det-models', nargs='+', choices=list(DET_CONFIGS),
                        default=DEFAULT_DET_MODELS, metavar='MODEL',
                        help=f'Mask R-CNN backbones, from: {", ".join(DET_CONFIGS)} '
                        f'(default: {" ".join(DEFAULT_DET_MODELS)})')
    parser.add_argument('--det-batch', type=options.positive_int(1), default=2,
                        help='images per Mask R-CNN iteration, as per GPU in the configs '
                        '(default: %(default)s)')
    parser.add_argument('--det-size', type=parse_size, default=(800, 1333), metavar='HxW',
                        help='Mask R-CNN image size, HEIGHTxWIDTH (default: 800x1333, the '
                        "configs' training scale)")
    parser.add_argument('--det-rois', type=options.positive_int(1), default=None, metavar='N',
                        help="RoIs sampled per image for the box and mask heads (default: the "
                        "configs' 512); the RoI heads' cost grows with it, so lower it only "
                        'for quick checks of the script')
    options.add_common_args(parser, warmup=1, repeat=3)
    args = parser.parse_args(argv)
    args.parts = list(dict.fromkeys(args.parts))
    if 'detector' in args.parts:
        for flag in ('compile', 'channels_last'):
            if getattr(args, flag):
                # The detectors run as their configs build them; the backbone part can show
                # what these options are worth.
                parser.error(f'argument --{flag.replace("_", "-")}: applies to the backbone '
                             'part only; add --parts backbone')
        if args.device == 'cpu' and (args.amp or args.amp_dtype):
            parser.error('argument --amp/--amp-dtype: the detector part cannot run under '
                         "autocast on CPU, where mmcv's ops (the RPN's nms) take float32 only "
                         '("expected scalar type Float but found BFloat16"); add --parts '
                         'backbone, or use --device cuda')
    args.settings = options.settings_from_args(parser, args)
    return args


def _last_channels(backbone: nn.Module, image: torch.Tensor) -> int:
    """Channels of the backbone's last output, from one eval forward of one image."""
    backbone.eval()
    with torch.inference_mode():
        return backbone(image)[-1].shape[1]


def _loss_fn(model: nn.Module, x: torch.Tensor,
             labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Forward and cross-entropy of the backbone part."""
    return lambda: F.cross_entropy(model(x), labels)


def _finish_row(row: Dict[str, Any], step: TrainStep, seconds: float, images: int,
                state: float, step_peak: float) -> None:
    """Fill in the timing, memory and loss fields shared by both parts."""
    row.update(img_per_s=images / seconds, state_mib=state, step_peak_mib=step_peak,
               peak_mib=state + step_peak, skipped_steps=step.skipped_steps())
    row['loss'] = step.last_loss_value() if not row['error'] else None


def measure_backbones(names: Sequence[str], batch: int, size: int,
                      settings: Settings) -> List[Dict[str, Any]]:
    """Training step time and peak memory of every backbone with a linear head.

    Args:
        names (Sequence[str]): Keys of :data:`dualformer_mm.benchmark.zoo.MODEL_ZOO`.
        batch (int): Images per step.
        size (int): Square input side.
        settings (Settings): Run options.

    Returns:
        List[Dict[str, Any]]: One row per model: ``model``, ``implementation``,
        ``params_m`` (backbone), ``batch``, ``size``, ``ms_per_step`` (median),
        ``img_per_s``, ``ratio_to_swin_t``, ``state_mib`` (weights, buffers, optimizer state
        and batch), ``step_peak_mib`` (what one step allocates on top), ``peak_mib`` (their
        sum), ``memory_ratio_to_swin_t``, ``loss`` (of the last step), ``skipped_steps``
        (fp16 steps the GradScaler skipped after settling), ``times_s`` and ``error``.
    """
    sources = resolve_sources(names, settings.peer_source)
    print_sources(sources)
    x = options.make_input(batch, size, size, settings)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (batch, ), generator=gen).to(settings.device)
    steps: Dict[str, TrainStep] = {}
    models: Dict[str, nn.Module] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    for name, source in sources.items():
        torch.manual_seed(0)
        backbone = build_model(name, source, image_size=(size, size))
        params = count_params(backbone)
        backbone.to(settings.device)
        classifier = LinearClassifier(backbone, _last_channels(backbone, x[:1]))
        classifier.train()
        model = options.prepare_model(classifier, settings)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=LR,
                                      weight_decay=WEIGHT_DECAY)
        steps[name] = TrainStep(_loss_fn(model, x, labels), optimizer, settings)
        models[name] = classifier
        rows[name] = dict(model=name, implementation=source.describe(), params_m=params / 1e6,
                          batch=batch, size=size)
    settle_all(steps)
    times, errors = time_interleaved(steps, settings)
    # After the timed steps, so AdamW's moments exist and count as state, not as the step's.
    peaks = peak_memory_all(steps, settings, errors)
    for name, row in rows.items():
        step = steps[name]
        seconds = median(times[name]) if name in times else math.nan
        row.update(ms_per_step=seconds * 1e3, times_s=times.get(name, []),
                   error=errors.get(name))
        state = state_mib(training_state(models[name], step.optimizer,
                                                       (x, labels)))
        _finish_row(row, step, seconds, batch, state, peaks[name])
    rows_list = list(rows.values())
    ratios.add_ratio(rows_list, 'img_per_s', 'ratio_to_swin_t')
    ratios.add_ratio(rows_list, 'peak_mib', 'memory_ratio_to_swin_t')
    return rows_list


def _backbone_fn(model: nn.Module, inputs: torch.Tensor,
                 settings: Settings) -> Callable[[], None]:
    """Forward and backward of the detector's backbone alone, as in the iteration."""

    def run() -> None:
        with autocast_context(settings):
            total = sum(f.float().mean() for f in model.backbone(inputs))
        # Every output gets a gradient, so backward runs through the whole backbone.
        total.backward()
        model.zero_grad(set_to_none=True)

    return run


def measure_detectors(names: Sequence[str], batch: int, height: int, width: int,
                      settings: Settings, mmdet_version: str,
                      rois: Optional[int] = None) -> List[Dict[str, Any]]:
    """Mask R-CNN training iteration time, peak memory and backbone share of every model.

    Args:
        names (Sequence[str]): Keys of :data:`DET_CONFIGS`.
        batch (int): Images per iteration.
        height (int): Image height before padding.
        width (int): Image width before padding.
        settings (Settings): Run options.
        mmdet_version (str): For the ``implementation`` field.
        rois (int, optional): RoIs sampled per image, instead of the configs' 512.

    Returns:
        List[Dict[str, Any]]: One row per model: ``model``, ``config``, ``implementation``,
        ``params_m`` (detector), ``backbone_params_m``, ``batch``, ``height``, ``width``,
        ``padded`` ([H, W] the preprocessor padded to), ``rois_per_image``,
        ``ms_per_iter`` (median), ``img_per_s``, ``ratio_to_swin_t``, ``backbone_ms``
        (backbone forward + backward), ``backbone_share``, the memory fields of
        :func:`measure_backbones`, ``loss``, ``skipped_steps``, ``times_s``,
        ``backbone_times_s``, ``error`` and ``backbone_error``.
    """
    from mmengine.logging import MMLogger

    # init_weights logs every parameter's init at INFO; warnings (no checkpoint) still show.
    MMLogger.get_instance('train_step', log_level='WARNING')
    dualformer = f'dualformer_mm {package_version("dualformer_mm") or ""}'.strip()
    fns: Dict[str, Callable[[], None]] = {}
    steps: Dict[str, TrainStep] = {}
    models: Dict[str, nn.Module] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    data = None
    for name in dict.fromkeys(names):
        model, optimizer, num_classes, sampled = detectors.build_detector(name, settings, rois,
                                                                          root=ROOT)
        if data is None:
            data = detectors.detection_batch(batch, height, width, num_classes)

        def loss_fn(model: nn.Module = model) -> torch.Tensor:
            losses = model(**model.data_preprocessor(data, True), mode='loss')
            return model.parse_losses(losses)[0]

        steps[name] = fns[name] = TrainStep(loss_fn, optimizer, settings)
        models[name] = model
        inputs = model.data_preprocessor(data, True)['inputs']
        fns[f'{name} backbone'] = _backbone_fn(model, inputs, settings)
        uses = f'{dualformer} in mmdet {mmdet_version}' if name != REFERENCE_MODEL else (
            f'mmdet {mmdet_version}')
        rows[name] = dict(model=name, config=detectors.config_label(name),
                          implementation=uses, params_m=count_params(model) / 1e6,
                          backbone_params_m=count_params(model.backbone) / 1e6,
                          batch=batch, height=height, width=width,
                          padded=list(inputs.shape[-2:]), rois_per_image=sampled)
        print(f'  {name}: {rows[name]["config"]} ({uses})', flush=True)
    settle_all(steps)
    times, errors = time_interleaved(fns, settings)
    peaks = peak_memory_all(steps, settings, errors)
    for name, row in rows.items():
        step = steps[name]
        seconds = median(times[name]) if name in times else math.nan
        backbone = f'{name} backbone'
        backbone_s = median(times[backbone]) if backbone in times else math.nan
        row.update(ms_per_iter=seconds * 1e3, backbone_ms=backbone_s * 1e3,
                   backbone_share=backbone_s / seconds if math.isfinite(backbone_s) else None,
                   times_s=times.get(name, []), backbone_times_s=times.get(backbone, []),
                   error=errors.get(name), backbone_error=errors.get(backbone))
        # The batch is made inside the step (data preprocessor), so the step counts it.
        state = state_mib(training_state(models[name], step.optimizer))
        _finish_row(row, step, seconds, batch, state, peaks[name])
    rows_list = list(rows.values())
    ratios.add_ratio(rows_list, 'img_per_s', 'ratio_to_swin_t')
    ratios.add_ratio(rows_list, 'peak_mib', 'memory_ratio_to_swin_t')
    return rows_list


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure, print, and write the requested outputs; returns the exit status."""
    args = parse_args(argv)
    settings = args.settings
    describe = output.describe_settings(settings)
    det_height, det_width = args.det_size
    # Every part's packages and configs are checked before minutes of measuring.
    mmdet_version = None
    if 'detector' in args.parts:
        mmdet_version = detectors.check_detector_requirements()
        for name in args.det_models:
            detectors.config_path(name, root=ROOT)
    backbone_rows = detector_rows = None
    if 'backbone' in args.parts:
        names = list(dict.fromkeys(args.models))
        print(f'building {", ".join(names)} with a linear head ...', flush=True)
        backbone_rows = measure_backbones(names, args.batch, args.size, settings)
        train_report.print_backbone_table(
            backbone_rows,
            f'training step at {args.size}x{args.size}, batch {args.batch}: linear head, '
            f'cross-entropy, AdamW; median of {settings.repeat} interleaved rounds; {describe}')
    if 'detector' in args.parts:
        names = list(dict.fromkeys(args.det_models))
        print(f'building Mask R-CNN with {", ".join(names)} ...', flush=True)
        # The configs' env_cfg leaves cuDNN autotuning off: RoI batches change shape with
        # every iteration, and each new shape would be tuned again.
        benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
        try:
            detector_rows = measure_detectors(names, args.det_batch, det_height, det_width,
                                              settings, mmdet_version, args.det_rois)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        padded = next((r['padded'] for r in detector_rows), None)
        train_report.print_detector_table(
            detector_rows,
            f'Mask R-CNN training iteration at {det_height}x{det_width}'
            + (f' (padded to {padded[0]}x{padded[1]})' if padded else '')
            + f', batch {args.det_batch}, {INSTANCES_PER_IMAGE} instances per image'
            + (f', {args.det_rois} RoIs per image (not the configs\' 512)' if args.det_rois
               else '')
            + ': data '
            f"preprocessor, loss, backward, the config's AdamW; median of {settings.repeat} "
            f'interleaved rounds; {describe}')
    payload = dict(
        benchmark='train_step', parts=args.parts,
        backbone=None if backbone_rows is None else dict(
            batch=args.batch, size=args.size, num_classes=NUM_CLASSES,
            optimizer=dict(type='AdamW', lr=LR, weight_decay=WEIGHT_DECAY),
            rows=backbone_rows),
        detector=None if detector_rows is None else dict(
            batch=args.det_batch, height=det_height, width=det_width,
            instances_per_image=INSTANCES_PER_IMAGE, rois_per_image=args.det_rois,
            rows=detector_rows),
        environment=output.describe_environment(settings))
    output.write_outputs(args, payload,
                         lambda path: train_report.plot(backbone_rows, detector_rows, path,
                                           f'Training speed; {describe}'))
    rows = (backbone_rows or []) + (detector_rows or [])
    return 1 if all(r['error'] for r in rows) else 0


if __name__ == '__main__':
    run_main(main)
