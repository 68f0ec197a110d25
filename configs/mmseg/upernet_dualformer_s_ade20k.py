# UperNet + DualFormer-S on ADE20K at 512x512: the paper's recipe (section 4.3).
# Paper's figure, not reproduced here: mIoU 48.6 (Table 4). Recipe: docs/recipes.md.
_base_ = './upernet_dualformer_t_ade20k.py'

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.2),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
