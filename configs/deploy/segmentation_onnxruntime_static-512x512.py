# mmdeploy 1.3.1: UperNet (semantic segmentation) to ONNX Runtime at 512x512. Written for
# DualFormer (configs/mmseg/upernet_dualformer_*.py); the fields are mmdeploy's (its
# configs/mmseg/segmentation_onnxruntime_static-512x512.py) with opset 18.
#
#   python tools/deploy.py configs/deploy/segmentation_onnxruntime_static-512x512.py \
#       configs/mmseg/upernet_dualformer_t_ade20k.py CKPT IMG --work-dir W --device cpu
_base_ = ['./_base_/onnxruntime.py']

# (width, height), mmdeploy's order.
onnx_config = dict(input_shape=[512, 512])

# with_argmax: the graph ends with the label map (N, 1, H, W); False keeps the logits.
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)
