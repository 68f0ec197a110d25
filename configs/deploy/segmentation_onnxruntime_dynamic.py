# mmdeploy 1.3.1: UperNet (semantic segmentation) to ONNX Runtime, batch, height and width
# dynamic. Written for DualFormer (configs/mmseg/upernet_dualformer_*.py); the fields are
# mmdeploy's (its configs/mmseg/segmentation_onnxruntime_dynamic.py) with opset 18.
# The sides must be multiples of 32 (docs/deployment.md, "Dynamic shapes"); mmseg's test
# pipeline resizes to 2048x512 keeping the ratio, so pad the image or pick a size that is.
#
#   python tools/deploy.py configs/deploy/segmentation_onnxruntime_dynamic.py \
#       configs/mmseg/upernet_dualformer_t_ade20k.py CKPT IMG --work-dir W --device cpu
_base_ = ['./_base_/onnxruntime.py']

onnx_config = dict(
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'output': {0: 'batch', 2: 'height', 3: 'width'},
    })

# with_argmax: the graph ends with the label map (N, 1, H, W); False keeps the logits.
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)
