# Reproduces DualFormer-XS on ImageNet-1K at 224x224 (paper Table 2, recipe of section 4.1).
_base_ = './dualformer_t_in1k.py'

model = dict(backbone=dict(arch='xs', drop_path_rate=0.1), head=dict(in_channels=368))
