# Copyright (c) dualformer-mm contributors.
"""The hook tier 2 of the GPU check adds to each training run: one predict step after it.

Imported by the training processes through the config's ``custom_imports``
(``gpu_check.predict_hook``, with ``tools/`` on ``PYTHONPATH``), so it runs under the
launcher the tools chose: on rank 0 it writes what the trained model predicted for the first
test batch.
"""
import json
import os
from typing import Any, Dict, List

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def summarize(samples: List[Any]) -> List[Dict[str, Any]]:
    """What each predicted data sample holds: boxes and masks, a segmentation map's shape, or
    classification scores (their number and whether all are finite)."""
    summary = []
    for s in samples:
        item: Dict[str, Any] = {}
        if 'pred_instances' in s:
            item['boxes'] = int(len(s.pred_instances))
            item['has_masks'] = 'masks' in s.pred_instances
        if 'pred_sem_seg' in s:
            item['seg_shape'] = list(s.pred_sem_seg.data.shape)
        if 'pred_score' in s:
            item['num_scores'] = int(s.pred_score.numel())
            item['scores_finite'] = bool(torch.isfinite(s.pred_score).all())
        summary.append(item)
    return summary


@HOOKS.register_module()
class GpuCheckPredictHook(Hook):
    """After training, run ``model.test_step`` on one test batch and write a summary.

    Args:
        out (str): JSON file for the summary: ``samples`` (see :func:`summarize`),
            ``world_size`` and ``device``.

    Example:
        >>> hook = GpuCheckPredictHook(out='/tmp/predict.json')
        >>> hook.out
        '/tmp/predict.json'
    """

    def __init__(self, out: str) -> None:
        self.out = out

    def after_run(self, runner) -> None:
        loader = runner.build_dataloader(runner.cfg.test_dataloader)
        batch = next(iter(loader))
        model = runner.model
        model.eval()
        with torch.no_grad():
            samples = model.test_step(batch)
        if get_rank() == 0:
            with open(self.out, 'w') as f:
                json.dump(dict(samples=summarize(samples),
                               world_size=int(os.environ.get('WORLD_SIZE', 1)),
                               device=str(next(runner.model.parameters()).device)), f)
