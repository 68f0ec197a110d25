# COCO 3x schedule of the paper (section 4.2, Table 3 right): the 1x optimizer (AdamW, lr 2e-4,
# weight decay 1e-4, batch 16) for 36 epochs, lr x0.1 after epochs 27 and 33.
_base_ = './coco_adamw_1x_dualformer.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
