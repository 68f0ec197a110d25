# COCO 2017 instance segmentation with the multi-scale training of the 3x schedule (paper
# Table 3, "3x schedule + MS", after Swin [31] and Sparse R-CNN [42]). The pipeline is that of
# the PVTv2 and mmdet Swin 3x configs [choice, docs/recipes.md]: random flip, then either a
# resize of the short side to 480..800 (step 32, long side <= 1333), or a resize to 400/500/600,
# a random 384..600 crop and the same 480..800 resize.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

multi_scales = [(1333, short) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize',
                     scales=[(1333, 400), (1333, 500), (1333, 600)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
