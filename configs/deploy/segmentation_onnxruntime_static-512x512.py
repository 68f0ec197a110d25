# mmdeploy 1.3.1: UperNet (semantic segmentation) to ONNX Runtime at 512x512. Written for
# DualFormer (configs/mmseg/upernet_dualformer_*.py); the fields are mmdeploy's (its
# configs/mmseg/segmentation_onnxruntime_static-512x512.py) with opset 18.
#
#   python tools/deploy.py configs/deploy/segmentation_onnxruntime_static-512x512.py \
#       configs/mmseg/upernet_dualformer_t_ade20k.py CKPT IMG --work-dir W --device cpu
#
# custom_imports: see instance-seg_onnxruntime_dynamic.py.
custom_imports = dict(
    imports=['dualformer_mm', 'dualformer_mm.deployment.mmdeploy_support'],
    allow_failed_imports=False)

onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=18,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['output'],
    # (width, height), mmdeploy's order.
    input_shape=[512, 512],
    optimize=False)

# with_argmax: the graph ends with the label map (N, 1, H, W); False keeps the logits.
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)

backend_config = dict(type='onnxruntime')
