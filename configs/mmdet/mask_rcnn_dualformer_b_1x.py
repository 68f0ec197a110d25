# Mask R-CNN + DualFormer-B on COCO 2017, 1x schedule: the paper's recipe (section 4.2).
# Paper's figure, not reproduced here: box AP 48.5, mask AP 43.6 (Table 3). Recipe: docs/recipes.md.
_base_ = './mask_rcnn_dualformer_t_1x.py'

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.4),
    neck=dict(in_channels=[64, 128, 368, 560]))
