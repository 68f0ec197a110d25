# COCO 1x schedule (paper section 4.2). The paper states: PVT's recipe, batch 16 on 8 GPUs
# (here 8 GPUs x 2 images), 12 epochs. From PVT's Mask R-CNN 1x configs, which the paper names
# [choice, docs/recipes.md]: AdamW, lr 2e-4, weight decay 1e-4, 500 linear warm-up iterations
# from x0.001, lr x0.1 after epochs 8 and 11, no gradient clipping.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
# Other batch sizes: --auto-scale-lr scales lr by (GPUs x images per GPU) / 16.
auto_scale_lr = dict(enable=False, base_batch_size=16)
# mmengine's loop, except that each training sample's augmentation draws from streams seeded by
# the run's seed, the epoch and its position, so that a resumed run loads the batches of the
# run it continues with any number of data workers (dualformer_mm/engine/loops.py).
train_cfg = dict(type='SeededEpochBasedTrainLoop')
