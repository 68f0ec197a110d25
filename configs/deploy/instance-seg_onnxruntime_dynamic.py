# mmdeploy 1.3.1: Mask R-CNN (instance segmentation) to ONNX Runtime, batch, height and width
# dynamic. Written for DualFormer (configs/mmdet/mask_rcnn_dualformer_*.py); the fields are
# mmdeploy's (its configs/mmdet/instance-seg/instance-seg_onnxruntime_dynamic.py) with opset 18.
#
#   python tools/deploy.py configs/deploy/instance-seg_onnxruntime_dynamic.py \
#       configs/mmdet/mask_rcnn_dualformer_t_1x.py CKPT IMG --work-dir W --device cpu
#
# custom_imports: mmengine's Config.fromfile imports what a config names, and every step of
# mmdeploy's tools/deploy.py runs in a spawned process that loads this file, so the mends of
# dualformer_mm.deployment.mmdeploy_support are registered wherever mmdeploy exports or runs.
custom_imports = dict(
    imports=['dualformer_mm', 'dualformer_mm.deployment.mmdeploy_support'],
    allow_failed_imports=False)

onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    # DualFormer's partition max is ScatterElements(reduction='max'): opset 18.
    opset_version=18,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['dets', 'labels', 'masks'],
    input_shape=None,
    # mmdeploy's graph optimiser is a compiled TorchScript pass built for torch <= 2.1.
    optimize=False,
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'dets': {0: 'batch', 1: 'num_dets'},
        'labels': {0: 'batch', 1: 'num_dets'},
        'masks': {0: 'batch', 1: 'num_dets', 2: 'height', 3: 'width'},
    })

codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1,
        # The 28x28 mask logits; mmdeploy pastes them into the image outside the graph.
        export_postprocess_mask=False))

backend_config = dict(type='onnxruntime')
