# UperNet + DualFormer-B on ADE20K at 512x512: the paper's recipe (section 4.3).
# Paper's figure, not reproduced here: mIoU 50.5 (Table 4). Recipe: docs/recipes.md.
_base_ = './upernet_dualformer_t_ade20k.py'

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.4),
    decode_head=dict(in_channels=[64, 128, 368, 560]),
    auxiliary_head=dict(in_channels=368))
