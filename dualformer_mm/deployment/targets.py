# Copyright (c) dualformer-mm contributors.
"""What ``tools/deployment/pytorch2onnx.py`` exports: one image-in, tensors-out module per part
of a model.

Each :class:`ExportTarget` pairs the module the exporter traces with the toolbox's own
computation it must equal (:attr:`ExportTarget.reference`), so the ONNX Runtime check compares
against what mmpretrain, mmseg or mmdet run, not against the wrapper:

* ``backbone``: DualFormer's four NCHW maps (strides 4 to 32, with their output norms), from
  any config of the repository (a classifier config is rebuilt with all four outputs).
* ``classifier`` (mmpretrain): the logits of ``model(x, mode='tensor')``.
* ``segmentor`` (mmseg, ``test_cfg.mode='whole'``): the decode head's logits resized to the
  input, what ``EncoderDecoder.encode_decode`` returns; the labels are their argmax.
* ``detector`` (mmdet): the backbone and FPN maps of ``extract_feat``. The RPN and RoI heads
  are not exported: their NMS and RoIAlign need the deployment ops of mmdeploy.

Inputs are normalised images (the data preprocessor's mean and std are not in the graph).
"""
import importlib.util
import os.path as osp
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..utils import build_model_from_cfg, config_toolbox
from ..utils.runner import replace_norm_type

#: The parts of a model :func:`build_target` exports.
PARTS = ('backbone', 'classifier', 'segmentor', 'detector')
#: The part exported by default for each toolbox (config ``default_scope``).
DEFAULT_PART = {'mmpretrain': 'classifier', 'mmseg': 'segmentor', 'mmdet': 'detector'}
#: The parts each toolbox's configs can give.
PARTS_OF = {'mmpretrain': ('backbone', 'classifier'), 'mmseg': ('backbone', 'segmentor'),
            'mmdet': ('backbone', 'detector')}
#: Why a detector's export stops at the FPN, for reports and ``--help``.
DETECTOR_HEADS_NOTE = (
    "For detectors this tool exports the backbone and FPN, whose maps Mask R-CNN's heads take. "
    'The whole Mask R-CNN (RPN and RoI heads with NMS, RoIAlign and mask pasting) deploys with '
    'mmdeploy 1.3.1 and configs/deploy/instance-seg_onnxruntime_dynamic.py '
    '(docs/deployment.md, "Deploy with mmdeploy").')


@dataclass
class ExportTarget:
    """A module to export and the toolbox computation it must reproduce.

    Attributes:
        module (nn.Module): Takes normalised images (N, C, H, W), returns a tuple of tensors.
        reference (Callable): The toolbox's own computation on the same images, as a list of
            tensors in the order of :attr:`output_names`.
        output_names (list[str]): Names of the ONNX outputs.
        backbone (nn.Module): The DualFormer inside, for the partition statistics.
        description (str): One line for the report.
        size_divisor (int): Input sides must be multiples of it (1: any size).
        notes (list[str]): What was loaded or left out, for the report.
        part (str): One of :data:`PARTS`.
        model (nn.Module, optional): The toolbox model the part comes from (its data
            preprocessor makes the inputs); None for the ``backbone`` part.
    """

    module: nn.Module
    reference: Callable[[Tensor], List[Tensor]]
    output_names: List[str]
    backbone: nn.Module
    description: str
    size_divisor: int = 1
    notes: Optional[List[str]] = None
    part: str = 'backbone'
    model: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        self.module.eval()


class _Backbone(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor):
        return tuple(self.backbone(x))


class _Classifier(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor):
        return (self.classifier(x, mode='tensor'), )


class _WholeSegmentor(nn.Module):
    """mmseg's whole inference of an EncoderDecoder: decode head, then resize to the input."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: Tensor):
        head = self.segmentor.decode_head
        logits = head(self.segmentor.extract_feat(x))
        # The input's own size, symbolic in a dynamic export (mmseg reads it from img_shape).
        return (F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                              align_corners=head.align_corners), )


class _DetectorFeatures(nn.Module):
    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: Tensor):
        return tuple(self.detector.extract_feat(x))


def load_config(path: str, cfg_options: Optional[Dict] = None) -> Config:
    """The config with every SyncBN as BN: the same weights, and in eval mode the same maps.

    ``path`` is a file or a toolbox's own config as ``'mmpretrain::swin_transformer/...'``.

    The backbone's ``init_cfg`` is dropped: an export takes its weights from the checkpoint
    (the detection and segmentation configs name an ImageNet checkpoint there).
    """
    if '::' in path:
        # A toolbox's own config ('mmseg::swin/...'), read from its installed package.
        package, relative = path.split('::', 1)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f'{path} needs the {package} package, which is not installed')
        path = osp.join(spec.submodule_search_locations[0], '.mim', 'configs', relative)
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    replace_norm_type(cfg.model, 'SyncBN', 'BN')
    cfg.model.backbone.init_cfg = None
    return cfg


def _load(module: nn.Module, checkpoint: Optional[str], prefix: str = '') -> List[str]:
    """Load ``checkpoint`` (tensors under ``prefix``) into ``module``; report missing keys."""
    if checkpoint is None:
        return ['no checkpoint: random weights (enough to check the export)']
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_with_prefix
    if prefix:
        state = _load_checkpoint_with_prefix(prefix, checkpoint, map_location='cpu')
    else:
        state = _load_checkpoint(checkpoint, map_location='cpu')
        state = state.get('state_dict', state)
        state = {k[len('module.'):] if k.startswith('module.') else k: v
                 for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    notes = [f'loaded {checkpoint}']
    if result.unexpected_keys:
        raise ValueError(f'{checkpoint} has keys the model lacks: {result.unexpected_keys[:5]} '
                         f'(of {len(result.unexpected_keys)}); is it for another config?')
    # A classifier has the output norm of its last stage only; the backbone part has four.
    fresh = [k for k in result.missing_keys if prefix and re.match(r'norm\d\.', k)]
    if len(fresh) < len(result.missing_keys):
        missing = [k for k in result.missing_keys if k not in fresh]
        raise ValueError(f'{checkpoint} lacks keys of the model: {missing[:5]} '
                         f'(of {len(missing)}); is it for another config?')
    if fresh:
        norms = sorted({k.split('.')[0] for k in fresh})
        notes.append(f'{", ".join(norms)} not in the checkpoint: initial values, as the '
                     'detection and segmentation configs start them from a classifier')
    return notes


def _find_backbone(model: nn.Module) -> nn.Module:
    backbone = getattr(model, 'backbone', None)
    if backbone is None:
        raise ValueError(f'the config\'s model ({type(model).__name__}) has no backbone')
    return backbone


def build_target(config: str, checkpoint: Optional[str] = None, part: str = 'auto',
                 cfg_options: Optional[Dict] = None) -> ExportTarget:
    """Build the :class:`ExportTarget` of ``part`` of the model of ``config``.

    Args:
        config (str): A config of the repository (or one like them).
        checkpoint (str, optional): Weights to load; random weights without.
        part (str): ``'auto'`` (the toolbox's part: classifier, segmentor or detector) or one
            of :data:`PARTS`. Defaults to ``'auto'``.
        cfg_options (dict, optional): Config overrides.

    Returns:
        ExportTarget: In eval mode, on the CPU.

    Raises:
        ValueError: A part the config's toolbox cannot give, naming the accepted ones.
    """
    cfg = load_config(config, cfg_options)
    scope = config_toolbox(cfg, config, tool='pytorch2onnx.py')
    if part == 'auto':
        part = DEFAULT_PART[scope]
    if part not in PARTS_OF[scope]:
        raise ValueError(f'--part must be one of {("auto", ) + PARTS_OF[scope]} for a '
                         f'{scope} config, got {part!r}')
    if part == 'backbone':
        backbone_cfg = cfg.model.backbone.copy()
        backbone_cfg.update(out_indices=(0, 1, 2, 3))
        backbone = MODELS.build(backbone_cfg).eval()
        notes = _load(backbone, checkpoint, prefix='backbone.')
        return ExportTarget(_Backbone(backbone), lambda x: list(backbone(x)),
                            [f'stage{i + 1}' for i in range(4)], backbone,
                            f"DualFormer-{backbone_cfg.get('arch', 't')} backbone, 4 maps "
                            '(strides 4, 8, 16, 32)', notes=notes)
    model = build_model_from_cfg(cfg).eval()
    notes = _load(model, checkpoint)
    backbone = _find_backbone(model)
    if part == 'classifier':
        return ExportTarget(_Classifier(model), lambda x: [model(x, mode='tensor')],
                            ['logits'], backbone, 'classifier logits', notes=notes, part=part,
                            model=model)
    if part == 'segmentor':
        mode = cfg.model.get('test_cfg', {}).get('mode', 'whole')
        if mode != 'whole':
            raise ValueError(f"the segmentor's test_cfg.mode is {mode!r}; only mmseg's 'whole' "
                             'inference is exported (--cfg-options model.test_cfg.mode=whole)')

        def encode_decode(x: Tensor) -> List[Tensor]:
            size = tuple(x.shape[2:])
            metas = [dict(img_shape=size, ori_shape=size, pad_shape=size)] * x.shape[0]
            return [model.encode_decode(x, metas)]

        return ExportTarget(_WholeSegmentor(model), encode_decode, ['seg_logits'], backbone,
                            "segmentor's whole inference: logits resized to the input",
                            notes=notes, part=part, model=model)
    # The detector's data preprocessor pads to a multiple of 32 for the FPN's top-down sums.
    divisor = cfg.model.get('data_preprocessor', {}).get('pad_size_divisor', 32)
    num_outs = cfg.model.neck.get('num_outs', 5)
    return ExportTarget(_DetectorFeatures(model), lambda x: list(model.extract_feat(x)),
                        [f'fpn{i}' for i in range(num_outs)], backbone,
                        f'detector backbone + FPN, {num_outs} maps', size_divisor=divisor,
                        notes=notes + [DETECTOR_HEADS_NOTE], part=part, model=model)
