# make demo: DualFormer-T image classifier on the synthetic shapes (4 classes, 64x64 images).
# Overrides of configs/mmpretrain/dualformer_t_in1k.py, which it inherits, and why:
# - train_dataloader, val_dataloader, test_dataloader, val_evaluator, test_evaluator: the
#   synthetic shapes (data/demo/cls, a CustomDataset folder) instead of ImageNet-1K. Training
#   takes 64x64 crops of 60-100% of an image and flips them, without ImageNet's RandAugment and
#   random erasing; evaluation takes the 64x64 images whole; 32 images per batch on 2
#   persistent workers; top-1 accuracy only (4 classes have no top-5).
# - data_preprocessor.num_classes, model.head.num_classes, model.head.topk: 4 classes, top-1.
# - model.backbone.drop_path_rate: 0 (the real config: 0.1). Stochastic depth regularises the
#   300-epoch ImageNet run; 4 epochs on the shapes need no regulariser.
# - model.train_cfg: None, so no Mixup and no CutMix (the real config: both, section 4.1), for
#   the same reason.
# - optim_wrapper.optimizer.lr: 2e-3, a short run's rate (the real config: 1e-3 at batch 1024).
# - param_scheduler, train_cfg: 4 epochs, 1 of linear warm-up, then cosine to 1e-5 (the real
#   config: 300 epochs, 5 of warm-up); validation after the last epoch.
# - default_hooks, work_dir: a log line every 5 iterations, a checkpoint every epoch of which the
#   last 2 are kept, the run in work_dirs/demo/cls.
_base_ = ['../mmpretrain/dualformer_t_in1k.py']

data_root = 'data/demo/cls'
classes = ('disc', 'square', 'triangle', 'cross')

data_preprocessor = dict(num_classes=4)
model = dict(
    backbone=dict(drop_path_rate=0.0),
    head=dict(num_classes=4, topk=(1, )),
    train_cfg=None)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.6, 1.0), backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32, num_workers=2, persistent_workers=True,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 ann_file='meta/train.txt', metainfo=dict(classes=classes),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32, num_workers=2, persistent_workers=True,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 ann_file='meta/val.txt', metainfo=dict(classes=classes),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

max_epochs = 4
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_last=True))
work_dir = 'work_dirs/demo/cls'
