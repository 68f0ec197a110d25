# UperNet + DualFormer-XS on ADE20K at 512x512: the paper's recipe (section 4.3).
# Paper's figure, not reproduced here: none (Table 4 reports only S and B). Recipe: docs/recipes.md.
_base_ = './upernet_dualformer_t_ade20k.py'

model = dict(
    backbone=dict(arch='xs', drop_path_rate=0.1),
    decode_head=dict(in_channels=[64, 128, 320, 368]),
    auxiliary_head=dict(in_channels=320))
