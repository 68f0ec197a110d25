# DualFormer-XS on ImageNet-1K at 224x224: the paper's recipe (section 4.1).
# Paper's figure, not reproduced here: top-1 81.5% (Table 2). Recipe: docs/recipes.md.
_base_ = './dualformer_t_in1k.py'

model = dict(backbone=dict(arch='xs', drop_path_rate=0.1), head=dict(in_channels=368))
