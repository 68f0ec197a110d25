# Reproduces UperNet + DualFormer-B on ADE20K at 512x512: mIoU 50.5 (paper Table 4, recipe of section 4.3).
_base_ = [
    '../_base_/models/upernet_dualformer.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/ade20k_adamw_80k_dualformer.py',
    'mmseg::_base_/default_runtime.py',
]

# Stochastic depth of the ImageNet recipe (the paper gives none for segmentation).
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.4),
    decode_head=dict(in_channels=[64, 128, 368, 560]),
    auxiliary_head=dict(in_channels=368))

# 8 GPUs x 4 images = the paper's batch of 32.
train_dataloader = dict(batch_size=4)
