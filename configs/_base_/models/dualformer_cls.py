# DualFormer image classifier (paper section 4.1): GAP over the last stage + linear head.
# DeiT-style mixup/cutmix and label smoothing, as the paper's recipe follows DeiT [43].
custom_imports = dict(imports=['dualformer_mm'], allow_failed_imports=False)
# Checkpoints carry the main process's random states (RandomStateHook) and our schedules' loops
# seed each sample's augmentation, so with a fixed randomness.seed a resumed run continues the
# interrupted one exactly, with any number of data workers (docs/reliability.md).
custom_hooks = [dict(type='RandomStateHook')]
model = dict(
    type='ImageClassifier',
    backbone=dict(type='DualFormer', arch='t', out_indices=(3, ), drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=320,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
