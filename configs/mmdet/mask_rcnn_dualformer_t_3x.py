# Mask R-CNN + DualFormer-T on COCO 2017, 3x schedule + MS: the paper's recipe (section 4.2).
# Paper's figure, not reproduced here: box AP 45.1, mask AP 41.2 (Table 3). Recipe: docs/recipes.md.
_base_ = [
    '../_base_/models/mask_rcnn_dualformer_fpn.py',
    '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/schedules/coco_adamw_3x_dualformer.py',
    'mmdet::_base_/default_runtime.py',
]

# Stochastic depth of the ImageNet recipe (the paper gives none for detection).
model = dict(
    backbone=dict(arch='t', drop_path_rate=0.1),
    neck=dict(in_channels=[64, 128, 256, 320]))

# 8 GPUs x 2 images = the paper's batch of 16.
train_dataloader = dict(batch_size=2)
