# Mask R-CNN + DualFormer-XS on COCO 2017, 1x schedule: the paper's recipe (section 4.2).
# Paper's figure, not reproduced here: box AP 44.6, mask AP 40.8 (Table 3). Recipe: docs/recipes.md.
_base_ = './mask_rcnn_dualformer_t_1x.py'

model = dict(
    backbone=dict(arch='xs', drop_path_rate=0.1),
    neck=dict(in_channels=[64, 128, 320, 368]))
