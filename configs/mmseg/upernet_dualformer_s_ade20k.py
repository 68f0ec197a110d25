# Reproduces UperNet + DualFormer-S on ADE20K at 512x512: mIoU 48.6 (paper Table 4, recipe of section 4.3).
_base_ = './upernet_dualformer_t_ade20k.py'

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.2),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
