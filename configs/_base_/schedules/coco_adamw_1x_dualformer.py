# COCO 1x schedule of the paper (section 4.2, PVT's Mask R-CNN recipe): AdamW, lr 2e-4 and
# weight decay 1e-4 at batch 16 (8 GPUs x 2 images), 12 epochs, 500 linear warm-up iterations,
# lr x0.1 after epochs 8 and 11.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
# Other batch sizes: --auto-scale-lr scales lr by (GPUs x images per GPU) / 16.
auto_scale_lr = dict(enable=False, base_batch_size=16)
