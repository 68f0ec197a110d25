# UperNet + DualFormer-T on ADE20K at 512x512: the paper's recipe (section 4.3).
# Paper's figure, not reproduced here: none (Table 4 reports only S and B). Recipe: docs/recipes.md.
_base_ = [
    '../_base_/models/upernet_dualformer.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/ade20k_adamw_80k_dualformer.py',
    'mmseg::_base_/default_runtime.py',
]

# Stochastic depth of the ImageNet recipe (the paper gives none for segmentation).
model = dict(
    backbone=dict(arch='t', drop_path_rate=0.1),
    decode_head=dict(in_channels=[64, 128, 256, 320]),
    auxiliary_head=dict(in_channels=256))

# 8 GPUs x 4 images = the paper's batch of 32.
train_dataloader = dict(batch_size=4)
