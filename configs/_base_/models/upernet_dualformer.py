# UperNet on a DualFormer backbone for ADE20K (paper section 4.3, Table 4); sizes set
# arch/channels. The heads are mmseg's UperNet of Swin (PPM + FPN, auxiliary FCN on stage 3).
_base_ = 'mmseg::_base_/models/upernet_swin.py'
custom_imports = dict(imports=['dualformer_mm'], allow_failed_imports=False)
# Checkpoints carry the main process's random states (RandomStateHook) and our schedules' loops
# seed each sample's augmentation, so with a fixed randomness.seed a resumed run continues the
# interrupted one exactly, with any number of data workers (docs/reliability.md).
custom_hooks = [dict(type='RandomStateHook')]

# Batches are padded to the 512x512 training crop of the dataset config.
data_preprocessor = dict(size=(512, 512))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='DualFormer',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        # BatchNorm backbone with 4 images per GPU: SyncBN, like mmseg's heads, so statistics
        # span the batch of 32. Without CUDA tools/train.py uses CPUSyncBN over gloo (logged).
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        # ImageNet-1K initialisation (paper section 4.3). No weights are released yet, so
        # checkpoint is None and DualFormer warns and keeps its own init (training from
        # scratch: NOT the paper's setting). Set it with
        #   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dualformer_t_in1k.pth
        init_cfg=dict(type='Pretrained', checkpoint=None, prefix='backbone.')),
    decode_head=dict(in_channels=[64, 128, 256, 320], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))
