# Copyright (c) dualformer-mm contributors.
"""The Mask R-CNNs of the training benchmark, built from the configs users train.

``configs/mmdet/mask_rcnn_dualformer_<size>_1x.py`` of this repository (found under the
checkout the caller names: the configs are no part of the installed package) and mmdet's own
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

#: Model name -> its Mask R-CNN config: a path relative to the repository's root, or
#: ``mmdet::`` and a config that mmdet ships.
DET_CONFIGS = {
    **{f'dualformer-{size}': f'configs/mmdet/mask_rcnn_dualformer_{size}_1x.py'
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


def config_path(name: str, root: str = '.') -> str:
    """The file of :data:`DET_CONFIGS` ``[name]``; ``mmdet::`` names one that mmdet ships.

    Args:
        name (str): A key of :data:`DET_CONFIGS`.
        root (str): The repository's root, which holds ``configs/``. Defaults to the working
            directory.

    Returns:
        str: The config file.

    Raises:
        BenchmarkError: The file is missing.

    Example:
        >>> config_path('dualformer-t', root='/nowhere')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dualformer_mm.benchmark.errors.BenchmarkError: the dualformer-t Mask R-CNN is built ...
    """
    config = DET_CONFIGS[name]
    if not config.startswith('mmdet::'):
        path = osp.normpath(osp.join(root, config))
        if not osp.isfile(path):
            raise BenchmarkError(f'the {name} Mask R-CNN is built from {config}, which is not '
                                 f'under {osp.abspath(root)}; run from a checkout of the '
                                 'repository')
        return path
    import mmdet
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', config[len('mmdet::'):])
    if not osp.isfile(path):
        raise BenchmarkError(
            f'the {name} Mask R-CNN is built from {config}, which mmdet {mmdet.__version__} '
            f'does not ship ({path} is missing); reinstall mmdet ({PIP_MMDET}) or leave '
            f'{name} out of --det-models')
    return path


def config_label(name: str) -> str:
    """:data:`DET_CONFIGS` ``[name]`` as the results name it: relative to the repository.

    Example:
        >>> config_label('swin-t')
        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
    """
    return DET_CONFIGS[name]


def build_detector(name: str, settings: Settings, rois: Optional[int] = None, root: str = '.'
                   ) -> Tuple[nn.Module, torch.optim.Optimizer, int, int]:
    """Build the Mask R-CNN of ``name`` from its config, in train mode on the device.

    Args:
        name (str): A key of :data:`DET_CONFIGS`.
        settings (Settings): Run options (device).
        rois (int, optional): RoIs sampled per image for the RoI heads, instead of the
            config's.
        root (str): The repository's root (:func:`config_path`). Defaults to the working
            directory.

    Returns:
        Tuple[nn.Module, torch.optim.Optimizer, int, int]: The detector, the config's
        optimizer (with its parameter-wise settings), the number of classes and the RoIs
        sampled per image.
    """
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper

    from ..utils import build_model_from_cfg
    cfg = Config.fromfile(config_path(name, root))
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
