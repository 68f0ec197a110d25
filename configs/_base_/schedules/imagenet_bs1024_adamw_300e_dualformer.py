# ImageNet-1K schedule of the paper (section 4.1): AdamW, lr 5e-4 at batch 1024, weight decay
# 0.05, 300 epochs: 5 linear warm-up epochs, cosine decay, then 10 cool-down epochs at the
# minimum lr (the cosine ends at epoch 290 and mmengine keeps its last value).
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    # No weight decay on norms and biases, as in DeiT and Swin.
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=285, eta_min=1e-5, by_epoch=True, begin=5, end=290,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# lr 5e-4 is for 8 GPUs x 128 images; other batch sizes scale it with --auto-scale-lr.
auto_scale_lr = dict(base_batch_size=1024)
