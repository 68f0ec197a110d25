# Copyright (c) dualformer-mm contributors.
"""What a result depends on, and the JSON and chart files of the benchmark scripts."""
import datetime
import json
import math
import os
import platform
from dataclasses import asdict
from typing import Any, Callable, Dict

import torch

from ..utils.environment import cpu_model, package_version
from .options import Settings


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
        'cpu_model': cpu_model(),
        'cpu_cores': os.cpu_count(),
        'threads': torch.get_num_threads(),
        'device': settings.device,
        'device_name': (torch.cuda.get_device_name() if settings.device == 'cuda'
                        else cpu_model()),
        'settings': asdict(settings),
    }
    try:
        from .. import ops
        from ..ops import _backend
        # The partition ops run fused C++/CUDA kernels or the PyTorch reference; DualFormer's
        # speed depends on which, so the result must say (`kernels`: what ran).
        mode, built = ops.get_backend(), ops.extension_available(settings.device)
        env['dualformer_ops'] = dict(
            mode=mode, extension=built,
            kernels=built and (mode == 'ext' or (
                mode == 'auto' and _backend.auto_picks_extension(settings.device))))
    except ImportError:
        env['dualformer_ops'] = None
    return env


def describe_settings(settings: Settings) -> str:
    """One line with the precision, format and compile options, for titles and headers."""
    parts = [f'{settings.amp_dtype} autocast' if settings.amp else 'fp32']
    parts.append('channels_last' if settings.channels_last else 'NCHW')
    parts.append('compiled' if settings.compile else 'eager')
    device = (torch.cuda.get_device_name() if settings.device == 'cuda'
              else f'CPU {cpu_model()}, {settings.threads} thread'
              + ('s' if settings.threads > 1 else ''))
    return f'{device}; {", ".join(parts)}'


def write_json(path: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, replacing NaN (a failed model) by null."""

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
