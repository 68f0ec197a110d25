# ADE20K schedule (paper section 4.3). The paper states: PVT's recipe, AdamW, lr 1e-4, weight
# decay 1e-4, batch 32 on 8 GPUs (here 8 GPUs x 4 images), 80k iterations. From PVT's ADE20K
# configs [choice, docs/recipes.md]: poly decay (power 0.9) to 0 over the 80k iterations, no
# warm-up, no gradient clipping.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
# mmseg's 80k schedule ends its poly decay at 1e-4, i.e. our initial lr: end at 0 instead.
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000,
                        by_epoch=False)]
# Other batch sizes: --auto-scale-lr scales lr by (GPUs x images per GPU) / 32.
auto_scale_lr = dict(enable=False, base_batch_size=32)
# mmengine's loop, except that each training sample's augmentation draws from streams seeded by
# the run's seed, the epoch and its position, so that a resumed run loads the batches of the
# run it continues with any number of data workers (dualformer_mm/engine/loops.py).
train_cfg = dict(type='SeededIterBasedTrainLoop')
