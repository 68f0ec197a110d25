# Mask R-CNN + DualFormer-S on COCO 2017, 3x schedule + MS: the paper's recipe (section 4.2).
# Paper's figure, not reproduced here: box AP 48.6, mask AP 44.0 (Table 3). Recipe: docs/recipes.md.
_base_ = './mask_rcnn_dualformer_t_3x.py'

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.2),
    neck=dict(in_channels=[64, 128, 320, 512]))
