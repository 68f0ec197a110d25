# mmdeploy 1.3.1: Mask R-CNN (instance segmentation) to ONNX Runtime, batch, height and width
# dynamic. Written for DualFormer (configs/mmdet/mask_rcnn_dualformer_*.py); the fields are
# mmdeploy's (its configs/mmdet/instance-seg/instance-seg_onnxruntime_dynamic.py) with opset 18.
#
#   python tools/deploy.py configs/deploy/instance-seg_onnxruntime_dynamic.py \
#       configs/mmdet/mask_rcnn_dualformer_t_1x.py CKPT IMG --work-dir W --device cpu
#
_base_ = ['./_base_/onnxruntime.py']

onnx_config = dict(
    output_names=['dets', 'labels', 'masks'],
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
