# Mask R-CNN + DualFormer-T on COCO 2017, 1x schedule: the paper's recipe (section 4.2).
# Paper's figure, not reproduced here: box AP 42.4, mask AP 39.2 (Table 3). Recipe: docs/recipes.md.
_base_ = [
    '../_base_/models/mask_rcnn_dualformer_fpn.py',
    # PVT's 1x data: short side 800 (long side <= 1333), random flip [choice, docs/recipes.md].
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/coco_adamw_1x_dualformer.py',
    'mmdet::_base_/default_runtime.py',
]

# Stochastic depth of the ImageNet recipe (the paper gives none for detection).
model = dict(
    backbone=dict(arch='t', drop_path_rate=0.1),
    neck=dict(in_channels=[64, 128, 256, 320]))

# 8 GPUs x 2 images = the paper's batch of 16.
train_dataloader = dict(batch_size=2)
