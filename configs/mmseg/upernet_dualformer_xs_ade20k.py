# UperNet + DualFormer-XS on ADE20K at 512x512 with the recipe of section 4.3 (paper Table 4 reports only S and B).
_base_ = [
    '../_base_/models/upernet_dualformer.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/ade20k_adamw_80k_dualformer.py',
    'mmseg::_base_/default_runtime.py',
]

# Stochastic depth of the ImageNet recipe (the paper gives none for segmentation).
model = dict(
    backbone=dict(arch='xs', drop_path_rate=0.1),
    decode_head=dict(in_channels=[64, 128, 320, 368]),
    auxiliary_head=dict(in_channels=320))

# 8 GPUs x 4 images = the paper's batch of 32.
train_dataloader = dict(batch_size=4)
