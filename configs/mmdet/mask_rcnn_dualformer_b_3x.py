# Mask R-CNN + DualFormer-B on COCO 2017, 3x schedule + MS: the paper's recipe (section 4.2).
# Paper's figure, not reproduced here: box AP 49.6, mask AP 44.6 (Table 3). Recipe: docs/recipes.md.
_base_ = './mask_rcnn_dualformer_t_3x.py'

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.4),
    neck=dict(in_channels=[64, 128, 368, 560]))
