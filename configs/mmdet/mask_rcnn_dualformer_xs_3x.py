# Reproduces Mask R-CNN + DualFormer-XS on COCO 2017, 3x schedule + multi-scale training: box AP 47.0, mask AP 42.5 (paper Table 3, section 4.2).
_base_ = './mask_rcnn_dualformer_t_3x.py'

model = dict(
    backbone=dict(arch='xs', drop_path_rate=0.1),
    neck=dict(in_channels=[64, 128, 320, 368]))
