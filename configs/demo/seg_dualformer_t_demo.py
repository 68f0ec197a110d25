# make demo: UperNet + DualFormer-T on the synthetic shapes (ADE20K format, 128x128 images).
# Inherits the real ADE20K 80k recipe and overrides only data, image size, classes and schedule.
_base_ = ['../mmseg/upernet_dualformer_t_ade20k.py']

data_root = 'data/demo/ade'
crop_size = (128, 128)
metainfo = dict(classes=('background', 'disc', 'square', 'triangle', 'cross'),
                palette=[(0, 0, 0), (220, 50, 40), (40, 170, 60), (40, 80, 220), (230, 190, 30)])

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(drop_path_rate=0.0),
    decode_head=dict(num_classes=5, channels=128),
    auxiliary_head=dict(num_classes=5, channels=64))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# ADE20KDataset only accepts subsets of the 150 ADE classes; BaseSegDataset reads the same
# ADE20K layout (images/<split>/*.jpg, annotations/<split>/*.png, label 0 = ignored "other").
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
               seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True,
    dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    dataset=dict(**dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

max_iters = 60
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=10),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=10, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=30, max_keep_ckpts=2, save_last=True))
work_dir = 'work_dirs/demo/seg'
