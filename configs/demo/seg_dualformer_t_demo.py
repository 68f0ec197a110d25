# make demo: UperNet + DualFormer-T on the synthetic shapes (ADE20K format, 128x128 images).
# Overrides of configs/mmseg/upernet_dualformer_t_ade20k.py, which it inherits, and why:
# - train_dataloader, val_dataloader, test_dataloader: the synthetic shapes (data/demo/ade,
#   ADE20K's layout read by BaseSegDataset) instead of ADE20K. Training flips the 128x128
#   images, without ADE20K's random rescale, 512x512 crop and photometric distortion;
#   evaluation takes them whole; 8 images per training batch on 2 persistent workers.
# - data_preprocessor.size, model.data_preprocessor.size: batches padded to 128x128 (the real
#   config: 512x512).
# - model.decode_head.num_classes, model.auxiliary_head.num_classes: 5 classes (4 shapes and
#   the background).
# - model.decode_head.channels, model.auxiliary_head.channels: 128 and 64 (the real config:
#   512 and 256), heads for 5 classes on 128x128 images instead of 150 classes on 512x512.
# - model.backbone.drop_path_rate: 0 (the real config: 0.1). Stochastic depth regularises long
#   runs; 60 iterations on the shapes need no regulariser.
# - optim_wrapper.optimizer.lr: 1e-3, a short run's rate (the real config: 1e-4 at batch 32).
# - param_scheduler, train_cfg: 60 iterations, 10 of linear warm-up, then poly decay to 0 (the
#   real config: 80k iterations of poly decay); validation after the last iteration.
# - default_hooks, work_dir: a log line every 10 iterations, a checkpoint every 30 of which the
#   last 2 are kept, the run in work_dirs/demo/seg.
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
