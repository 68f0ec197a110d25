# make demo: Mask R-CNN + DualFormer-T on the synthetic shapes (COCO format, 160x160 images).
# Overrides of configs/mmdet/mask_rcnn_dualformer_t_1x.py, which it inherits, and why:
# - train_dataloader, val_dataloader, test_dataloader, val_evaluator, test_evaluator: the
#   synthetic shapes (data/demo/coco, COCO instances with masks) instead of COCO 2017, resized
#   to 160x160 instead of 1333x800; 4 images per batch on 2 persistent workers, for
#   validation too.
# - model.roi_head.bbox_head.num_classes, model.roi_head.mask_head.num_classes: 4 classes.
# - model.train_cfg.rpn_proposal.nms_pre, model.test_cfg.rpn.nms_pre: 500 proposals before
#   NMS (the real config: 2000 in training, 1000 in testing).
# - model.train_cfg.rpn_proposal.max_per_img, model.test_cfg.rpn.max_per_img: 200 after NMS
#   (the real config: 1000).
# - model.train_cfg.rcnn.sampler.num: 64 RoIs sampled per image (the real config: 512). A
#   160x160 image holds 1-3 shapes, and COCO's proposal and RoI numbers would spend the CPU
#   minutes on the RoI heads.
# - model.backbone.drop_path_rate: 0 (the real config: 0.1). Stochastic depth regularises long
#   runs; 2 epochs on the shapes need no regulariser.
# - optim_wrapper.optimizer.lr: 4e-4, a short run's rate (the real config: 2e-4 at batch 16).
# - param_scheduler, train_cfg: 2 epochs, 50 iterations of linear warm-up, then cosine to 1e-5
#   (the real config: 12 epochs, lr x0.1 after epochs 8 and 11); validation after the last
#   epoch.
# - default_hooks, work_dir: a log line every 10 iterations, a checkpoint every epoch of which
#   the last 2 are kept, the run in work_dirs/demo/det.
_base_ = ['../mmdet/mask_rcnn_dualformer_t_1x.py']

data_root = 'data/demo/coco/'
metainfo = dict(classes=('disc', 'square', 'triangle', 'cross'),
                palette=[(220, 50, 40), (40, 170, 60), (40, 80, 220), (230, 190, 30)])

model = dict(
    backbone=dict(drop_path_rate=0.0),
    roi_head=dict(bbox_head=dict(num_classes=4), mask_head=dict(num_classes=4)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=2, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=2, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 2
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_last=True))
work_dir = 'work_dirs/demo/det'
