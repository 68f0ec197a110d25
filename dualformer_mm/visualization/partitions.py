# Copyright (c) dualformer-mm contributors.
"""The partitions MHPA draws on an image (paper section 3.2, Figure 6).

Records the partition codes every :class:`PartitionAttention` module computes during one
forward pass and paints them over the image, one panel per stage (first block, first head).
"""
import math
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

from dualformer_mm.models.backbones.dualformer import PartitionAttention

# Distinct colours for up to 16 partitions.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195)], dtype=np.uint8)


@torch.no_grad()
def record_partitions(backbone: torch.nn.Module, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Run ``backbone`` on ``image`` (1, 3, H, W) and return each MHPA module's codes.

    Returns:
        dict: module name -> int64 tensor (heads, h, w) of partition codes on MHPA's grid.
    """
    records: Dict[str, torch.Tensor] = {}
    shapes: Dict[str, Tuple[int, int]] = {}
    originals = {}
    modules = {n: m for n, m in backbone.named_modules() if isinstance(m, PartitionAttention)}

    def wrap(name: str, module: PartitionAttention):
        """Record the codes of one module, on its downsampled (h, w) grid."""
        def partition_codes(tokens: torch.Tensor) -> torch.Tensor:
            codes = originals[name](tokens)
            records[name] = codes[0].view(codes.shape[1], *shapes[name]).cpu()
            return codes
        return partition_codes

    def pre_hook(name: str):
        """Remember the token grid the module's downsampling will produce."""
        def hook(module: PartitionAttention, args: Tuple[torch.Tensor]) -> None:
            height, width = args[0].shape[-2:]
            k = module.sr_ratio
            shapes[name] = (math.ceil(height / k), math.ceil(width / k))
        return hook

    handles = []
    try:
        for name, module in modules.items():
            originals[name] = module.partition_codes
            module.partition_codes = wrap(name, module)
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
        was_training = backbone.training
        backbone.eval()
        backbone(image)
        backbone.train(was_training)
    finally:
        for name, module in modules.items():
            del module.partition_codes  # back to the class's method
        for handle in handles:
            handle.remove()
    return records


def draw_partitions(image: np.ndarray, records: Dict[str, torch.Tensor], out_file: str,
                    alpha: float = 0.55) -> List[str]:
    """Paint the partitions of the first block of each stage (head 0) beside the image.

    Args:
        image (np.ndarray): RGB uint8 image (H, W, 3) the codes were computed on.
        records (dict): Output of :func:`record_partitions`.
        out_file (str): PNG to write.
        alpha (float): Opacity of the partition colours. Defaults to 0.55.

    Returns:
        list[str]: The module names drawn, in panel order.
    """
    height, width = image.shape[:2]
    names = []
    for name in records:
        stage = name.split('.blocks.')[0]
        if name.endswith('blocks.0.attn') and stage not in {n.split('.blocks.')[0] for n in names}:
            names.append(name)
    panels = [image]
    for name in names:
        codes = records[name][0].numpy()
        colours = PALETTE[codes % len(PALETTE)]
        colours = np.asarray(Image.fromarray(colours).resize((width, height), Image.NEAREST))
        panels.append((image * (1 - alpha) + colours * alpha).astype(np.uint8))
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    Image.fromarray(row).save(out_file)
    return names
