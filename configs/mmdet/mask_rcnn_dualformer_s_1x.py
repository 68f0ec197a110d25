# Mask R-CNN + DualFormer-S on COCO 2017, 1x schedule: the paper's recipe (section 4.2).
# Paper's figure, not reproduced here: box AP 46.8, mask AP 42.6 (Table 3). Recipe: docs/recipes.md.
_base_ = './mask_rcnn_dualformer_t_1x.py'

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.2),
    neck=dict(in_channels=[64, 128, 320, 512]))
