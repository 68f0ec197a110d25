# UperNet + DualFormer-XS on ADE20K at 512x512 with the recipe of section 4.3 (paper Table 4 reports only S and B).
_base_ = './upernet_dualformer_t_ade20k.py'

model = dict(
    backbone=dict(arch='xs', drop_path_rate=0.1),
    decode_head=dict(in_channels=[64, 128, 320, 368]),
    auxiliary_head=dict(in_channels=320))
