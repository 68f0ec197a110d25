# Mask R-CNN + FPN on a DualFormer backbone (paper section 4.2, Table 3); sizes set arch/channels.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['dualformer_mm'], allow_failed_imports=False)
# Checkpoints carry the main process's random states (RandomStateHook) and our schedules' loops
# seed each sample's augmentation, so with a fixed randomness.seed a resumed run continues the
# interrupted one exactly, with any number of data workers (docs/reliability.md).
custom_hooks = [dict(type='RandomStateHook')]

model = dict(
    backbone=dict(
        _delete_=True,
        type='DualFormer',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        # Norm: the backbone is built of BatchNorm layers and detection trains with 2 images per
        # GPU, so, as OpenMMLab does for BN backbones that keep learning their statistics, the
        # layers become SyncBN: with 8 GPUs their statistics are over the whole batch of 16.
        # On a machine without CUDA tools/train.py swaps SyncBN for dualformer-mm's CPUSyncBN,
        # which all-reduces the statistics over gloo (with a log line). On one small GPU,
        # `--cfg-options model.backbone.norm_eval=True` freezes the ImageNet statistics instead
        # (the ResNet recipe); it is not the default because the paper's backbones fine-tune.
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        # The paper initialises the backbone from ImageNet-1K (Table 3). No DualFormer weights
        # are released yet, so checkpoint is None: DualFormer then logs a warning and keeps its
        # own TruncNormal/Constant init (training from scratch, which is NOT the paper's
        # setting). Point it at an
        # ImageNet classifier checkpoint, as written by tools/model_converters/
        # dualformer_cls_to_backbone.py (prefix 'backbone.' selects the backbone weights):
        #   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dualformer_t_in1k.pth
        init_cfg=dict(type='Pretrained', checkpoint=None, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 320]))
