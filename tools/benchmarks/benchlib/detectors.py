# Copyright (c) dualformer-mm contributors.
"""The Mask R-CNNs of the training benchmark, built from the configs users train.

``configs/mmdet/mask_rcnn_dualformer_<size>_1x.py`` of this repository and mmdet's own
``swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``, with a batch of generated COCO-style data.
Everything here needs mmdet, imported when it is used: :func:`check_detector_requirements`
names what is missing before any measuring starts.
"""
import os.path as osp
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .errors import BenchmarkError
from .options import Settings
from .zoo import PIP_MMDET, REFERENCE_MODEL

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
DET_CONFIGS = {
    **{f'dualformer-{size}': osp.join(REPO_ROOT, 'configs', 'mmdet',
                                      f'mask_rcnn_dualformer_{size}_1x.py')
       for size in ('t', 'xs', 's', 'b')},
    'swin-t': 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
}
INSTANCES_PER_IMAGE = 7  # COCO train2017: 860k annotated instances over 118k images


def check_detector_requirements() -> str:
    """mmdet's version, or an error naming what the detector part needs."""
    try:
        import mmdet
        from mmdet.testing import demo_mm_inputs  # noqa: F401
    except ImportError as err:
        raise BenchmarkError(
            f'the detector part needs mmdet, which cannot be imported ({type(err).__name__}: '
            f'{err}); install it ({PIP_MMDET}) or measure the backbones only with '
            '--parts backbone') from None
    return mmdet.__version__


def config_path(name: str) -> str:
    """The file of :data:`DET_CONFIGS` ``[name]``; ``mmdet::`` names one that mmdet ships."""
    config = DET_CONFIGS[name]
    if not config.startswith('mmdet::'):
        return config
    import mmdet
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', config[len('mmdet::'):])
    if not osp.isfile(path):
        raise BenchmarkError(
            f'the {name} Mask R-CNN is built from {config}, which mmdet {mmdet.__version__} '
            f'does not ship ({path} is missing); reinstall mmdet ({PIP_MMDET}) or leave '
            f'{name} out of --det-models')
    return path


def config_label(name: str) -> str:
    """:data:`DET_CONFIGS` ``[name]`` as the results name it: relative to the repository."""
    config = DET_CONFIGS[name]
    return osp.relpath(config, REPO_ROOT) if osp.isabs(config) else config


def build_detector(name: str, settings: Settings, rois: Optional[int] = None
                   ) -> Tuple[nn.Module, torch.optim.Optimizer, int, int]:
    """Build the Mask R-CNN of ``name`` from its config, in train mode on the device.

    Args:
        name (str): A key of :data:`DET_CONFIGS`.
        settings (Settings): Run options (device).
        rois (int, optional): RoIs sampled per image for the RoI heads, instead of the
            config's.

    Returns:
        Tuple[nn.Module, torch.optim.Optimizer, int, int]: The detector, the config's
        optimizer (with its parameter-wise settings), the number of classes and the RoIs
        sampled per image.
    """
    import dualformer_mm  # noqa: F401  (registers DualFormer)
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper

    from dualformer_mm.utils import build_model_from_cfg
    cfg = Config.fromfile(config_path(name))
    if name == REFERENCE_MODEL:
        # Its Pretrained init names a download; random weights time the same.
        cfg.model.backbone.init_cfg = None
    if rois is not None:
        cfg.model.train_cfg.rcnn.sampler.num = rois
    torch.manual_seed(0)
    # Outside distributed runs the Runner turns SyncBN back into BatchNorm; so does this.
    model = revert_sync_batchnorm(build_model_from_cfg(cfg))
    model.init_weights()
    model.to(settings.device)
    model.train()
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    return (model, optimizer, cfg.model.roi_head.bbox_head.num_classes,
            cfg.model.train_cfg.rcnn.sampler.num)


def detection_batch(batch: int, height: int, width: int, num_classes: int) -> Dict[str, Any]:
    """Generated COCO-style training data: images, boxes, labels and bitmap masks."""
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=batch, image_shapes=(3, height, width),
                          num_items=[INSTANCES_PER_IMAGE] * batch, num_classes=num_classes,
                          with_mask=True)
