# Reproduces Mask R-CNN + DualFormer-B on COCO 2017, 3x schedule + multi-scale training: box AP 49.6, mask AP 44.6 (paper Table 3, section 4.2).
_base_ = './mask_rcnn_dualformer_t_3x.py'

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.4),
    neck=dict(in_channels=[64, 128, 368, 560]))
